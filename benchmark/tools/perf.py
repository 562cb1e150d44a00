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
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from benchmark.training import device_name, environment, setup
from benchmark.training.packed import setup_packed
from benchmark.training.run import make_optimizer

import models

from benchmark.config import RunSpec, load_protocol

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


#: The row of the bare PyTorch loop (``--bare``), the floor of the engine's own overhead.
BARE = "bare loop (no engine)"


def parse_regularizers(text: str | None, registry_defaults: bool = False) -> dict[str, dict]:
    """'all', 'default' (None) or a comma list of names (at the docs' settings where they have
    one; ``registry_defaults``: at the registry's defaults instead, what the suites use)."""
    if text in (None, "default"):
        chosen = dict(DEFAULT_REGULARIZERS)
    elif text == "all":
        chosen = dict(ALL_REGULARIZERS)
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if "weight_decay" not in names:  # the baseline of every ratio comes first
            names.insert(0, "weight_decay")
        chosen = {n: dict(ALL_REGULARIZERS.get(n, {})) for n in names}
    return {n: {} for n in chosen} if registry_defaults else chosen


class BareLoop:
    """The floor of the engine: the same model (same init), optimizer and batch size in a plain
    PyTorch loop (random batch indices into the resident uint8 images, the same input scaling,
    forward, plain cross-entropy, backward, SGD step), no regularizer, no augmentation, no
    engine. Built from a run so that everything but the engine is the run's."""

    def __init__(self, run) -> None:
        spec, proto = run.spec, run.spec.protocol
        torch.manual_seed(spec.seed)
        self.model = models.create(spec.model, num_classes=run.data.num_classes,
                                   in_chans=run.data.in_chans, **spec.model_kwargs)
        self.model.to(device=run.device, dtype=run.dtype, memory_format=run.memory_format)
        if proto.bn_momentum is not None:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = proto.bn_momentum
        self.opt = make_optimizer(self.model.parameters(), proto.optimizer)
        self.x, self.y, self.run = run.data.train_x, run.data.train_y, run
        self.batch, self.smoothing = proto.batch_size, proto.label_smoothing
        self.gen = torch.Generator(device=run.device).manual_seed(spec.seed)

    def step(self, lr: float):
        for group in self.opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.gen,
                            device=self.x.device)
        x = self.run.inputs(self.x[idx])
        loss = F.cross_entropy(self.model(x), self.y[idx], label_smoothing=self.smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


# The random-number ops of ATen: in-place fills of their output and fresh tensors (randn & co.).
_RANDOM_OPS = {"normal_", "uniform_", "bernoulli_", "random_", "exponential_", "normal",
               "randn", "rand", "randint", "randperm", "bernoulli", "multinomial"}


class _CountRandom(TorchDispatchMode):
    """Counts the numbers every random ATen op of a region produces (sum of output numels)."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in _RANDOM_OPS and isinstance(out, torch.Tensor):
            self.numbers += out.numel()
        return out


def step_work(run, lr: float) -> dict[str, int]:
    """The work of one training step of ``run``, counted, not timed (so a loaded machine cannot
    move it): ``flops``, the matmul and convolution FLOPs that torch's ``FlopCounterMode``
    counts (forward, backward, the regularizer's own passes; elementwise work is not counted),
    and ``random_numbers``, the numbers drawn by random ops (RP's projections, augmentation)."""
    with FlopCounterMode(display=False) as flops, _CountRandom() as rng:
        run.step(lr)
    return {"flops": int(flops.get_total_flops()), "random_numbers": rng.numbers}


def _bare_eval(run, batch: int = 1000) -> int:
    """The floor of an evaluation: a bare ``torch.no_grad`` loop over the run's test images."""
    model, n, correct = run.model, run.data.test_x.shape[0], 0
    model.eval()
    with torch.no_grad():
        for lo in range(0, n, batch):
            logits = model(run.inputs(run.data.test_x[lo:lo + batch]))
            correct += int((logits.argmax(1) == run.data.test_y[lo:lo + batch]).sum())
    model.train()
    return correct


def _parse_threads(threads) -> list[int]:
    if threads in (None, "", 0):
        return [torch.get_num_threads()]
    if isinstance(threads, int):
        return [threads]
    if isinstance(threads, str):
        threads = [int(t) for t in threads.split(",") if t.strip()]
    return [int(t) for t in threads]


def measure(model: str = "cnn9", batch_size: int = 128, steps: int = 20, warmup: int = 5,
            rounds: int = 3, regularizers: dict[str, dict] | None = None,
            model_kwargs: dict | None = None, device: str = "auto", protocol: str = "paper_cifar",
            num_classes: int = 100, compile_mode: str = "auto", pack_seeds: int = 1,
            dataset: str | None = None, threads=None, bare: bool = False,
            eval_rounds: int = 0, work: bool = False) -> dict:
    """Median ms per training step for each regularizer; returns a JSON-able result dict.

    The first regularizer is the baseline of the ratios. One that fails to build or step is
    reported with its error instead of ending the measurement. ``pack_seeds`` > 1 adds a packed
    row per regularizer (S seeds in one program). ``threads`` (a list, or "1,2"): torch's
    intra-op thread counts, interleaved inside every round (each row says its count; ratios are
    against the baseline at the same count). ``bare``: also time :class:`BareLoop`, the engine's
    floor (its row's ``ratio`` is against the baseline too: the engine's overhead is 1 / that).
    ``eval_rounds`` > 0: also time ``Run.evaluate`` (all test images) against a bare
    ``torch.no_grad`` loop, interleaved, that many rounds per thread count. ``work``: also
    count each row's FLOPs and random numbers per step (:func:`step_work`, after the timing),
    the floor that no implementation of the same arithmetic goes below.
    """
    regularizers = regularizers or DEFAULT_REGULARIZERS
    thread_counts = _parse_threads(threads)
    previous_threads = torch.get_num_threads()
    overrides = {"batch_size": batch_size, "runtime.device": device,
                 "runtime.compile": compile_mode}
    if dataset is None:
        overrides["data.max_train"] = max(4096, 4 * batch_size)
    proto = load_protocol(protocol, overrides)
    data_name = dataset or f"synthetic:{num_classes}"
    runs, errors, packed_of = {}, {}, {}
    for name, hparams in regularizers.items():
        specs = [RunSpec(proto, data_name, model, name, seed,
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
    # (Counted after the timed rounds below: a step counted here would shift the runs' streams.)
    base_name = next(iter(runs))
    base_run = runs[base_name]
    if bare:
        runs[BARE] = BareLoop(base_run)
        for _ in range(warmup):
            runs[BARE].step(proto.optimizer.lr)
    dev = base_run.device
    cuda = dev.type == "cuda"
    lr = proto.optimizer.lr

    if cuda:
        torch.cuda.synchronize()

    times = {(t, name): [] for t in thread_counts for name in runs}
    eval_times = {(t, what): [] for t in thread_counts for what in ("engine", "bare")}
    try:
        for _ in range(rounds):
            for t in thread_counts:
                torch.set_num_threads(t)
                for name, run in runs.items():
                    times[(t, name)] += _time_steps(run, steps, lr, cuda)
        for _ in range(eval_rounds):
            for t in thread_counts:
                torch.set_num_threads(t)
                for what, fn in (("engine", base_run.evaluate), ("bare", lambda: _bare_eval(base_run))):
                    start = time.perf_counter()
                    fn()
                    if cuda:
                        torch.cuda.synchronize()
                    eval_times[(t, what)].append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous_threads)

    counted = {key: step_work(run, lr) for key, run in runs.items()} if work else {}
    # CPU time (the process's, all threads) besides wall time: on a shared machine a 1-thread
    # step's CPU time is far less sensitive to other work than its wall time.
    cpu_times = {k: [c for _, c in v] for k, v in times.items()}
    times = {k: [w for w, _ in v] for k, v in times.items()}
    rows = []
    for (t, key), ts in times.items():
        base = statistics.median(times[(t, base_name)])
        cpu_base = statistics.median(cpu_times[(t, base_name)])
        reg = packed_of.get(key, key)
        seeds = pack_seeds if key in packed_of else 1
        per_seed = statistics.median(ts) / seeds
        row = {"regularizer": reg, "hparams": regularizers.get(reg, {}), "packed_seeds": seeds,
               "threads": t, "median_ms": statistics.median(ts), "per_seed_ms": per_seed,
               "ratio": per_seed / base, "n_steps": len(ts)}
        if not cuda:
            cpu = statistics.median(cpu_times[(t, key)])
            row.update(cpu_ms=cpu, cpu_ratio=cpu / seeds / cpu_base)
        if key in packed_of and (t, reg) in times:
            row["vs_single"] = per_seed / statistics.median(times[(t, reg)])
        if key in counted:
            row.update(counted[key], flops_ratio=counted[key]["flops"] / seeds
                       / counted[base_name]["flops"])
        rows.append(row)
    rows += [{"regularizer": packed_of.get(key, key), "hparams": regularizers[packed_of.get(key, key)],
              "packed_seeds": pack_seeds if key in packed_of else 1, "error": err}
             for key, err in errors.items()]
    evaluation = [{"threads": t, "images": int(base_run.data.test_x.shape[0]),
                   "engine_ms": statistics.median(eval_times[(t, "engine")]),
                   "bare_ms": statistics.median(eval_times[(t, "bare")]),
                   "ratio": statistics.median(eval_times[(t, "engine")])
                   / statistics.median(eval_times[(t, "bare")])}
                  for t in thread_counts if eval_rounds > 0]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(dev), "model": model, "model_kwargs": model_kwargs or {},
        "batch_size": batch_size, "baseline": base_name, "protocol": protocol, "dataset": data_name,
        "load_average": _load_average(),
        "settings": {"steps": steps, "warmup": warmup, "rounds": rounds, "threads": thread_counts,
                     "bf16": base_run.bf16, "compile": base_run.compile_mode,
                     "channels_last": base_run.memory_format == torch.channels_last},
        **environment(), "rows": rows, "evaluation": evaluation,
    }


def _time_steps(run, steps: int, lr: float, cuda: bool) -> list[float]:
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for start, end in events:
            start.record()
            run.step(lr)
            end.record()
        torch.cuda.synchronize()
        return [(s.elapsed_time(e), float("nan")) for s, e in events]
    out = []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        run.step(lr)
        out.append(((time.perf_counter() - t) * 1000.0, (time.process_time() - c) * 1000.0))
    return out


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def format_table(result: dict) -> str:
    st = result["settings"]
    load = result.get("load_average")
    lines = [f"{result['model']} {result['model_kwargs'] or ''} batch {result['batch_size']} "
             f"on {result['device']} ({result.get('dataset', '')}, protocol "
             f"{result.get('protocol', '')}, torch {result['versions']['torch']}, "
             f"compile={st['compile']}, bf16={st['bf16']}, channels_last={st['channels_last']}, "
             f"{result['date']}, load average after {load})",
             "| regularizer | threads | seeds per step | ms / step (median) | ms / seed-step "
             "| x unregularized | packed / single | CPU ms / step | x unregularized (CPU time) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        hp = ", ".join(f"{k}={v}" for k, v in r["hparams"].items())
        name = f"{r['regularizer']}{f' ({hp})' if hp else ''}"
        seeds = r.get("packed_seeds", 1)
        if "error" in r:
            lines.append(f"| {name} | | {seeds} | failed: {r['error']} | | | | | |")
            continue
        vs = f"{r['vs_single']:.2f}" if "vs_single" in r else ""
        lines.append(f"| {name} | {r.get('threads', '')} | {seeds} | {r['median_ms']:.2f} "
                     f"| {r['per_seed_ms']:.2f} | {r['ratio']:.3f} | {vs} "
                     f"| {r.get('cpu_ms', float('nan')):.2f} | {r.get('cpu_ratio', float('nan')):.3f} |")
    counted = [r for r in result["rows"] if "flops" in r and r.get("threads") == st["threads"][0]]
    if counted:
        lines += ["", "Work per step, counted (matmul and convolution FLOPs by torch's FlopCounterMode; "
                  "random numbers drawn):", "| regularizer | seeds per step | GFLOP / step "
                  "| x unregularized (FLOPs) | random numbers / step |", "|---|---|---|---|---|"]
        lines += [f"| {r['regularizer']} | {r.get('packed_seeds', 1)} | {r['flops'] / 1e9:.3f} "
                  f"| {r['flops_ratio']:.3f} | {r['random_numbers']:,} |" for r in counted]
    for e in result.get("evaluation", []):
        lines.append(f"evaluation of {e['images']} test images, {e['threads']} thread(s): engine "
                     f"{e['engine_ms']:.0f} ms, bare no_grad loop {e['bare_ms']:.0f} ms "
                     f"({e['ratio']:.2f}x)")
    return "\n".join(lines)


def main(args) -> int:
    kwargs = {} if getattr(args, "width", None) is None else {"width": args.width}
    result = measure(model=args.model, batch_size=args.batch_size, steps=args.steps,
                     warmup=args.warmup, rounds=args.rounds, device=args.device,
                     compile_mode=args.compile, pack_seeds=args.pack_seeds,
                     regularizers=parse_regularizers(args.regularizers,
                                                     getattr(args, "registry_defaults", False)),
                     protocol=getattr(args, "protocol", "paper_cifar"), model_kwargs=kwargs,
                     num_classes=getattr(args, "classes", 100), dataset=getattr(args, "dataset", None),
                     threads=getattr(args, "threads", None), bare=getattr(args, "bare", False),
                     eval_rounds=getattr(args, "eval_rounds", 0), work=getattr(args, "work", False))
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"-> {out}")
    return 0
