"""``python -m benchmark perf``: training-step time of the engine, per regularizer, as ratios.

Times exactly ``engine.Run.step`` (the loop every run uses: real sampling and augmentation on
device-resident uint8 data, autocast/channels_last as the protocol says), on whatever device is
here. With ``pack_seeds = S > 1`` each regularizer is also measured as S seeds packed into one
program (``benchmark.training.packed``): its row gives the step of all S seeds, the cost per seed-step and
its ratio to the single run of the same regularizer. The regularizers are measured in interleaved rounds (A B C A B C ...) so drift of a shared
machine hits all of them alike; the number reported is the median step over all rounds, and
each ratio is against the unregularized (``weight_decay``) step of the same run.

GPU: CUDA events around each step after a warm-up. CPU: ``time.perf_counter``.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmark.training import device_name, environment, setup
from benchmark.training.packed import setup_packed

from .config import RunSpec, load_protocol

# What the docs' tables measure: the paper's CNN-9 at batch 128, RP-CoMHE as performance.md.
DEFAULT_REGULARIZERS = {
    "weight_decay": {},
    "hs_mhe": {},
    "rp_comhe": {"proj_dim": 30, "num_projections": 20},
}
# ``--regularizers all``: every registered family at the settings the docs' tables use.
ALL_REGULARIZERS = {
    **DEFAULT_REGULARIZERS, "mhe": {}, "ap_comhe": {"proj_dim": 30}, "adv_comhe": {"proj_dim": 30},
    "g_comhe": {}, "so": {}, "srip": {},
}


def parse_regularizers(text: str | None) -> dict[str, dict]:
    """'all', 'default' (None) or a comma list of names (at the docs' settings where they have one)."""
    if text in (None, "default"):
        return dict(DEFAULT_REGULARIZERS)
    if text == "all":
        return dict(ALL_REGULARIZERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if "weight_decay" not in names:  # the baseline of every ratio comes first
        names.insert(0, "weight_decay")
    return {n: dict(ALL_REGULARIZERS.get(n, {})) for n in names}


def measure(model: str = "cnn9", batch_size: int = 128, steps: int = 20, warmup: int = 5,
            rounds: int = 3, regularizers: dict[str, dict] | None = None,
            model_kwargs: dict | None = None, device: str = "auto", protocol: str = "paper_cifar",
            num_classes: int = 100, compile_mode: str = "auto", pack_seeds: int = 1) -> dict:
    """Median ms per training step for each regularizer; returns a JSON-able result dict.

    The first regularizer is the baseline of the ratios. One that fails to build or step is
    reported with its error instead of ending the measurement. ``pack_seeds`` > 1 adds a packed
    row per regularizer (S seeds in one program).
    """
    regularizers = regularizers or DEFAULT_REGULARIZERS
    proto = load_protocol(protocol, {"batch_size": batch_size, "runtime.device": device,
                                     "runtime.compile": compile_mode,
                                     "data.max_train": max(4096, 4 * batch_size)})
    runs, errors, packed_of = {}, {}, {}
    for name, hparams in regularizers.items():
        specs = [RunSpec(proto, f"synthetic:{num_classes}", model, name, seed,
                         model_kwargs=dict(model_kwargs or {}), regularizer_hparams=hparams)
                 for seed in range(max(1, pack_seeds))]
        variants = [(name, lambda specs=specs: setup(specs[0]))]
        if pack_seeds > 1:
            variants.append((f"{name} x{pack_seeds} packed", lambda specs=specs: setup_packed(specs)))
            packed_of[f"{name} x{pack_seeds} packed"] = name
        for key, build in variants:
            try:
                runs[key] = build()
                for _ in range(warmup):  # includes compilation and CUDA-graph recording
                    runs[key].step(proto.optimizer.lr)
            except Exception as exc:  # noqa: BLE001 - report, keep measuring the others
                errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                runs.pop(key, None)
    if not runs:
        raise RuntimeError(f"perf: nothing could be measured: {errors}")
    dev = next(iter(runs.values())).device
    cuda = dev.type == "cuda"
    lr = proto.optimizer.lr

    if cuda:
        torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            if cuda:
                events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                          for _ in range(steps)]
                for start, end in events:
                    start.record()
                    run.step(lr)
                    end.record()
                torch.cuda.synchronize()
                times[name] += [s.elapsed_time(e) for s, e in events]
            else:
                for _ in range(steps):
                    t = time.perf_counter()
                    run.step(lr)
                    times[name].append((time.perf_counter() - t) * 1000.0)

    base_name = next(iter(runs))
    base = statistics.median(times[base_name])
    rows = []
    for key, t in times.items():
        reg = packed_of.get(key, key)
        seeds = pack_seeds if key in packed_of else 1
        per_seed = statistics.median(t) / seeds
        row = {"regularizer": reg, "hparams": regularizers[reg], "packed_seeds": seeds,
               "median_ms": statistics.median(t), "per_seed_ms": per_seed, "ratio": per_seed / base,
               "n_steps": len(t)}
        if key in packed_of and reg in times:
            row["vs_single"] = per_seed / statistics.median(times[reg])
        rows.append(row)
    rows += [{"regularizer": packed_of.get(key, key), "hparams": regularizers[packed_of.get(key, key)],
              "packed_seeds": pack_seeds if key in packed_of else 1, "error": err}
             for key, err in errors.items()]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(dev), "model": model, "model_kwargs": model_kwargs or {},
        "batch_size": batch_size, "baseline": base_name,
        "settings": {"steps": steps, "warmup": warmup, "rounds": rounds,
                     "bf16": runs[base_name].bf16, "compile": runs[base_name].compile_mode,
                     "channels_last": runs[base_name].memory_format == torch.channels_last},
        **environment(), "rows": rows,
    }


def format_table(result: dict) -> str:
    st = result["settings"]
    lines = [f"{result['model']} batch {result['batch_size']} on {result['device']} "
             f"(torch {result['versions']['torch']}, compile={st['compile']}, bf16={st['bf16']}, "
             f"channels_last={st['channels_last']}, {result['date']})",
             "| regularizer | seeds per step | ms / step (median) | ms / seed-step | x unregularized "
             "| packed / single |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        hp = ", ".join(f"{k}={v}" for k, v in r["hparams"].items())
        name = f"{r['regularizer']}{f' ({hp})' if hp else ''}"
        seeds = r.get("packed_seeds", 1)
        if "error" in r:
            lines.append(f"| {name} | {seeds} | failed: {r['error']} | | | |")
            continue
        vs = f"{r['vs_single']:.2f}" if "vs_single" in r else ""
        lines.append(f"| {name} | {seeds} | {r['median_ms']:.2f} | {r['per_seed_ms']:.2f} "
                     f"| {r['ratio']:.2f} | {vs} |")
    return "\n".join(lines)


def main(args) -> int:
    result = measure(model=args.model, batch_size=args.batch_size, steps=args.steps,
                     warmup=args.warmup, rounds=args.rounds, device=args.device,
                     compile_mode=args.compile, pack_seeds=args.pack_seeds,
                     regularizers=parse_regularizers(args.regularizers))
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"-> {out}")
    return 0
