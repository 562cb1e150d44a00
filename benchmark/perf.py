"""``python -m benchmark perf``: training-step time of the engine, per regularizer, as ratios.

Times exactly ``engine.Run.step`` (the loop every run uses: real sampling and augmentation on
device-resident uint8 data, autocast/channels_last as the protocol says), on whatever device is
here. The regularizers are measured in interleaved rounds (A B C A B C ...) so drift of a shared
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

from .config import RunSpec, load_protocol
from .engine import device_name, environment, setup

# What the docs' tables measure: the paper's CNN-9 at batch 128, RP-CoMHE as performance.md.
DEFAULT_REGULARIZERS = {
    "weight_decay": {},
    "hs_mhe": {},
    "rp_comhe": {"proj_dim": 30, "num_projections": 20},
}


def measure(model: str = "cnn9", batch_size: int = 128, steps: int = 20, warmup: int = 5,
            rounds: int = 3, regularizers: dict[str, dict] | None = None,
            model_kwargs: dict | None = None, device: str = "auto", protocol: str = "paper_cifar",
            num_classes: int = 100, compile_mode: str = "auto") -> dict:
    """Median ms per training step for each regularizer; returns a JSON-able result dict.

    The first regularizer is the baseline of the ratios. One that fails to build or step is
    reported with its error instead of ending the measurement.
    """
    regularizers = regularizers or DEFAULT_REGULARIZERS
    proto = load_protocol(protocol, {"batch_size": batch_size, "runtime.device": device,
                                     "runtime.compile": compile_mode,
                                     "data.max_train": max(4096, 4 * batch_size)})
    runs, errors = {}, {}
    for name, hparams in regularizers.items():
        spec = RunSpec(proto, f"synthetic:{num_classes}", model, name, 0,
                       model_kwargs=dict(model_kwargs or {}), regularizer_hparams=hparams)
        try:
            runs[name] = setup(spec)
            for _ in range(warmup):  # includes compilation and CUDA-graph recording
                runs[name].step(proto.optimizer.lr)
        except Exception as exc:  # noqa: BLE001 - report, keep measuring the others
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            runs.pop(name, None)
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
    rows = [{"regularizer": name, "hparams": regularizers[name],
             "median_ms": statistics.median(t), "ratio": statistics.median(t) / base,
             "n_steps": len(t)} for name, t in times.items()]
    rows += [{"regularizer": name, "hparams": regularizers[name], "error": err}
             for name, err in errors.items()]
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
             "| regularizer | ms / step (median) | x unregularized |", "|---|---|---|"]
    for r in result["rows"]:
        hp = ", ".join(f"{k}={v}" for k, v in r["hparams"].items())
        if "error" in r:
            lines.append(f"| {r['regularizer']} | failed: {r['error']} | |")
            continue
        lines.append(f"| {r['regularizer']}{f' ({hp})' if hp else ''} | {r['median_ms']:.2f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main(args) -> int:
    result = measure(model=args.model, batch_size=args.batch_size, steps=args.steps,
                     warmup=args.warmup, rounds=args.rounds, device=args.device,
                     compile_mode=args.compile)
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"-> {out}")
    return 0
