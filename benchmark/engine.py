"""The training engine: the one loop every run goes through.

    spec -> data + model + regularizer -> SGD loop (eval every N, checkpoint every M) -> record

Per iteration, in the authors' order: the regularizer's pre-step hook (AP/Adv inner projection
steps, told the current LR), then forward, label-smoothed CE + penalty, backward, SGD step (weight
decay on every parameter). Evaluation uses running BN statistics on the whole test set; the
reported metric is the one at the final iteration.

GPU: the protocol's ``runtime.precision`` (the paper protocols: fp32 with TF32 tensor cores;
"auto": bf16 autocast) and channels_last. CPU: fp32. The code path is the same.

``train`` is ``train_packed`` with one spec: the same loop drives a single ``Run`` or a
``packed.PackedRun`` (S seeds as one program); ``runtime.compile`` picks eager, torch.compile, or
the whole-step CUDA graph of ``capture.py``. All of them are tested against the eager path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import records
from .config import ConfigError, RunSpec
from .data import BatchStream, Dataset, check_dataset_name, load_dataset, scale_input

# Host syncs are what make a small GPU step slow: the loss is checked for finiteness on the
# device every step and read back only every this many steps (and at every evaluation).
FINITE_CHECK_EVERY = 50


# --------------------------------------------------------------------------------------------
# Validation (before anything runs)


def validate(spec: RunSpec) -> None:
    """Raise ConfigError (one line) if the spec names anything unknown or impossible."""
    import regularizers

    from .plugins import load_plugins

    load_plugins()  # those of a parent process (workers), a no-op otherwise
    check_dataset_name(spec.dataset)
    _check_model(spec.model, json.dumps(spec.model_kwargs, sort_keys=True))
    try:
        regularizers.create(spec.regularizer, **spec.regularizer_hparams)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    if not isinstance(spec.seed, int) or spec.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {spec.seed!r}")


@functools.lru_cache(maxsize=64)
def _check_model(name: str, kwargs_json: str) -> None:
    """Build the model on the meta device (no memory, no init cost): unknown names and
    keywords fail here, before any run, with the registry's one-line message."""
    import models

    try:
        with torch.device("meta"):
            models.create(name, num_classes=10, **json.loads(kwargs_json))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Pieces of the loop


def weight_decay_term(model: torch.nn.Module, wd: float) -> float:
    """wd/2 * sum of squares of ALL parameters (what SGD's weight_decay=wd minimises)."""
    with torch.no_grad():
        return float(wd / 2 * sum(p.double().pow(2).sum() for p in model.parameters()))


def layer_energies(model: torch.nn.Module, roles: dict[str, str]) -> dict[str, float]:
    """Plain (unprojected, full-space, s=2) hyperspherical energy of every conv/linear weight."""
    from regularizers import hyperspherical_energy

    params = dict(model.named_parameters())
    with torch.no_grad():
        return {
            name: float(hyperspherical_energy(params[name].detach().float().flatten(1), s=2))
            for name in roles
            if params[name].shape[0] >= 2
        }


@torch.no_grad()
def evaluate(run: Run, x_all, y_all, batch=1000) -> tuple[float, float]:
    """(accuracy %, mean CE) on a test set with running BN statistics."""
    model = run.model
    model.eval()
    correct, loss_sum = torch.zeros((), device=x_all.device), torch.zeros((), device=x_all.device)
    for lo in range(0, x_all.shape[0], batch):
        x = run.inputs(x_all[lo : lo + batch])
        y = y_all[lo : lo + batch]
        with run.autocast():
            logits = model(x).to(run.dtype)
        correct += (logits.argmax(1) == y).sum()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
    model.train()
    n = x_all.shape[0]
    return float(correct) * 100.0 / n, float(loss_sum) / n


def environment() -> dict:
    import numpy
    import timm
    import torchvision

    from . import __version__

    return {
        "git": records.git_state(),
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "comhe_bench": __version__,
        },
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _new_curves() -> dict:
    return {k: [] for k in ("iteration", "test_acc", "test_error", "train_loss", "penalty",
                            "energy_total")} | {"energy": {}}


# --------------------------------------------------------------------------------------------
# The run


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float,
                           softmax_eps: float) -> torch.Tensor:
    """Mean of -sum_k t_k log(softmax(z)_k + softmax_eps), t = (1 - smoothing) onehot + smoothing/K.

    softmax_eps = 0 is PyTorch's label-smoothed cross-entropy; the authors' TF code uses 1e-4.
    logits (..., B, K), y (..., B): the mean is over B, one value per leading index (packed seeds).
    """
    if softmax_eps == 0:
        if logits.dim() == 2:
            return F.cross_entropy(logits, y, label_smoothing=smoothing)
        per_example = F.cross_entropy(logits.flatten(0, -2), y.flatten(), label_smoothing=smoothing,
                                      reduction="none")
        return per_example.view(y.shape).mean(-1)
    k = logits.shape[-1]
    target = F.one_hot(y, k).to(logits.dtype) * (1 - smoothing) + smoothing / k
    return -(target * torch.log(torch.softmax(logits, dim=-1) + softmax_eps)).sum(-1).mean(-1)


class _Steps:
    """The training step shared by ``Run`` and ``packed.PackedRun``: plain, compiled, or replayed
    from a whole-step CUDA graph (``runtime.compile``; ``capture.GraphedStep``)."""

    def _init_step(self) -> None:
        from .capture import GraphedStep

        mode, cuda = self.compile_mode, self.device.type == "cuda"
        self._loss, self._graphed = self._eager_loss, None
        if mode == "graph":
            if cuda:  # fused kernels without graphs of their own: the whole step is recorded
                self._loss = torch.compile(self._eager_loss)
            self._graphed = GraphedStep(self, capture=cuda)
        elif mode != "off":
            self._loss = torch.compile(self._eager_loss, mode=mode)
        # reduce-overhead replays CUDA graphs: each step must be marked, and the graph's
        # outputs are overwritten by the next replay (we read them within the step).
        self._mark_step = mode in ("reduce-overhead", "max-autotune") and cuda

    def autocast(self):
        # autocast's cast cache must be off while a CUDA graph is recorded (PyTorch's notes)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16,
                              cache_enabled=self.compile_mode != "graph")

    def step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One iteration in the authors' order; returns (loss, ce, penalty), not synced
        (0-dim for a run, (S,) for packed seeds)."""
        if self._graphed is not None:
            return self._graphed(lr)
        return self.eager_step(lr)

    def prepare_step(self, lr: float) -> None:
        """The learning rate, then the per-iteration hook, eager: AP/Adv inner projection steps
        (network frozen), RP's fresh projections. What follows is a pure function of weights and
        batch (compilable, recordable)."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.before_step(lr)

    def eager_step(self, lr: float):
        self.prepare_step(lr)
        x, y = self.stream.next()
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        loss, ce, pen = self._loss(self.inputs(x), y)
        self.opt.zero_grad(set_to_none=True)
        # packed seeds: the sum of the seeds' losses, so d(sum)/d(theta_s) = d(loss_s)/d(theta_s)
        loss.sum().backward()
        self.opt.step()
        return loss, ce, pen


@dataclass
class Run(_Steps):
    """Everything a training step needs, built once from a spec (also used by ``perf``)."""

    spec: RunSpec
    device: torch.device
    data: Dataset
    model: torch.nn.Module
    roles: dict[str, str]
    reg: Any  # a regularizers.Regularizer
    opt: torch.optim.Optimizer
    stream: BatchStream
    bf16: bool
    memory_format: torch.memory_format
    compile_mode: str = "off"
    dtype: torch.dtype = torch.float32  # of weights, inputs and loss (autocast aside)

    def __post_init__(self) -> None:
        self._init_step()

    def _eager_loss(self, x: torch.Tensor, y: torch.Tensor):
        with self.autocast():
            logits = self.model(x)
        p = self.spec.protocol
        ce = smoothed_cross_entropy(logits.to(self.dtype), y, p.label_smoothing, p.softmax_eps)
        pen = self.reg.penalty()
        return ce + pen, ce, pen

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = scale_input(x, self.spec.protocol.data.input_scaling, self.dtype)
        return x.contiguous(memory_format=self.memory_format)

    @property
    def seeds(self) -> int:
        return 1

    def before_step(self, lr: float) -> None:
        # the epoch of the batch this step takes (Regularizer.set_epoch: SRIP's schedule)
        self.reg.set_epoch(self.stream.epoch)
        self.reg.before_step(lr)

    # The interface ``train`` drives, shared with ``packed.PackedRun`` (lists: one entry per seed).
    def iteration0(self, weight_decay: float) -> list[tuple[float, float, float]]:
        """(CE of the first batch, weight-decay term, penalty) at initialisation. The forward runs
        in training mode (batch statistics, as the authors' log) and the BN running statistics
        are restored after it: the diagnostic must not change the training that follows."""
        saved = [b.clone() for b in self.model.buffers()]
        p = self.spec.protocol
        with torch.no_grad(), self.autocast():
            x, y = self.stream.next()
            self.stream.load_state_dict({"epoch": 0, "position": 0})
            logits = self.model(self.inputs(x))
            ce = smoothed_cross_entropy(logits.to(self.dtype), y, p.label_smoothing, p.softmax_eps)
        with torch.no_grad():
            for b, v in zip(self.model.buffers(), saved):
                b.copy_(v)
        pen = self.reg.penalty()
        return [(float(ce), weight_decay_term(self.model, weight_decay), float(pen.detach()))]

    def evaluate(self) -> list[tuple[float, float]]:
        return [evaluate(self, self.data.test_x, self.data.test_y)]

    def layer_energies(self) -> list[dict[str, float]]:
        return [layer_energies(self.model, self.roles)]

    @property
    def models(self) -> list[torch.nn.Module]:
        return [self.model]

    @property
    def regs(self) -> list[Any]:
        return [self.reg]

    @property
    def specs(self) -> list[RunSpec]:
        return [self.spec]

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "regularizer": self.reg.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.reg.load_state_dict(state["regularizer"])
        self.stream.load_state_dict(state["stream"])


def runtime_settings(proto, device: torch.device) -> tuple[bool, torch.memory_format, str, torch.dtype]:
    """(bf16 autocast, memory format, compile mode, dtype) the protocol's ``runtime`` gives.

    On CUDA it also sets the process-wide TF32 switches for this run (every run sets them, so
    one run's precision never leaks into the next): "tf32" allows TF32 tensor cores for fp32
    matmuls and convolutions, "fp32" forbids both (strict fp32), bf16/auto/fp64 keep PyTorch's
    defaults (matmuls strict, cuDNN convolutions TF32). The record says what was in effect
    (``runtime.tf32_matmul`` / ``runtime.tf32_cudnn``, :func:`tf32_state`).
    """
    cuda = device.type == "cuda"
    rt = proto.runtime
    bf16 = rt.precision == "bf16" or (rt.precision == "auto" and cuda)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = rt.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = rt.precision != "fp32"
    cl = rt.channels_last
    memory_format = torch.channels_last if cl == "on" or (cl == "auto" and cuda) else torch.contiguous_format
    mode = rt.compile
    if mode == "auto":
        mode = "reduce-overhead" if cuda else "off"
    dtype = torch.float64 if rt.precision == "fp64" else torch.float32
    return bf16, memory_format, mode, dtype


def tf32_state(device: torch.device) -> dict[str, bool]:
    """Whether fp32 matmuls / cuDNN convolutions may use TF32 tensor cores (False on the CPU)."""
    cuda = device.type == "cuda"
    return {"tf32_matmul": cuda and bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": cuda and bool(torch.backends.cudnn.allow_tf32)}


def build_model(spec: RunSpec, data: Dataset) -> torch.nn.Module:
    """The spec's model for this data (initialised from the global seed, on the current default
    device), with the protocol's BatchNorm momentum."""
    import models

    model = models.create(spec.model, num_classes=data.num_classes, in_chans=data.in_chans,
                          **spec.model_kwargs)
    if spec.protocol.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = spec.protocol.bn_momentum
    return model


def setup(spec: RunSpec) -> Run:
    """Data on the device, model (seeded init), regularizer attached, optimiser, batch stream."""
    import regularizers

    proto = spec.protocol
    device = resolve_device(proto.runtime.device)
    bf16, memory_format, mode, dtype = runtime_settings(proto, device)
    data = load_dataset(spec.dataset, proto.data).to(device)
    torch.manual_seed(spec.seed)  # model init
    model = build_model(spec, data).to(device=device, dtype=dtype, memory_format=memory_format)
    roles = dict(getattr(model, "weight_roles", {})) or regularizers.infer_roles(model)
    reg = regularizers.create(spec.regularizer, **spec.regularizer_hparams)
    reg.attach(model, roles=roles, seed=spec.seed)
    o = proto.optimizer
    # weight_decay on every parameter, BN gamma/beta included, as the recipe.
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    stream = BatchStream(data, proto.batch_size, spec.seed, proto.data)
    return Run(spec, device, data, model, roles, reg, opt, stream, bf16, memory_format, mode, dtype)


def train(spec: RunSpec, results_dir: str | Path, *, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Run (or resume) one run; write its record atomically and return it.

    ``stop_after``: leave after this many iterations of this call, checkpoint written and no
    record (a time-limited job, or a test of resuming). Returns {} in that case.
    """
    return train_packed([spec], results_dir, progress=progress, stop_after=stop_after)[0]


def pack_id(specs: list[RunSpec]) -> str:
    """The checkpoint name of a run, or of a packed group of runs (resumable only as that group)."""
    if len(specs) == 1:
        return specs[0].run_id
    blob = ",".join(sorted(s.run_id for s in specs))
    return "pack-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_packed(specs: list[RunSpec], results_dir: str | Path, *, progress: bool = True,
                 stop_after: int | None = None) -> list[dict]:
    """Run (or resume) runs that differ by seed only as ONE program (``packed.PackedRun``; one
    run is the plain ``Run``). Every run gets its own record, written when the group ends, as the
    single run would write it (plus ``runtime.packed_seeds``); one checkpoint holds the group.

    A seed that diverges is recorded as diverged at its iteration and the others go on (its
    tensors are its own: NaNs do not cross seeds). Returns the records ([{}, ...] on stop_after).
    """
    for spec in specs:
        validate(spec)
    proto = specs[0].protocol
    S = len(specs)
    results_dir = Path(results_dir)
    ckpt_path = records.checkpoint_path(results_dir, pack_id(specs))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if S == 1:
        run = setup(specs[0])
    else:
        from .packed import setup_packed

        run = setup_packed(specs)
    device, data = run.device, run.data
    cuda = device.type == "cuda"
    opt_cfg = proto.optimizer

    curves, window_ms, start_it, elapsed_before = [_new_curves() for _ in specs], [], 0, 0.0
    # Running sums since the last evaluation (logged as window means); part of the checkpoint.
    window = {"loss_sum": [0.0] * S, "pen_sum": [0.0] * S, "steps": 0}
    diverged: list[int | None] = [None] * S  # iteration at which each seed's loss went non-finite
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        run.load_state_dict(ck["run"])
        torch.set_rng_state(ck["rng_cpu"])
        if cuda and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"])
        curves, window_ms, diverged = ck["curves"], ck["window_ms"], ck["diverged"]
        start_it, elapsed_before, window = ck["iteration"], ck["elapsed_s"], ck["window"]

    base_record = {
        "schema_version": records.SCHEMA_VERSION, "status": "failed", "reason": None,
        **environment(), "device": device_name(device), "synthetic": data.synthetic,
        "notes": list(getattr(run.models[0], "model_notes", [])),
        "regularizer_hparams_resolved": dict(run.regs[0].hparams),
        "runtime": {"compile": run.compile_mode, "bf16": run.bf16, "dtype": str(run.dtype),
                    "channels_last": run.memory_format == torch.channels_last, "packed_seeds": S,
                    "precision": proto.runtime.precision, **tf32_state(device)},
        # the regularizer's strength schedule in effect (SRIP's epochs), None without one
        "regularizer_schedule": run.regs[0].epoch_schedule(
            getattr(run.stream, "per_epoch", None) or run.stream.streams[0].per_epoch,
            proto.iterations),
        "started_at": started,
    }

    if start_it == 0:
        for spec, (ce0, wd0, pen0) in zip(specs, run.iteration0(opt_cfg.weight_decay)):
            print(f"[{spec.run_id}] iteration 0: CE {ce0:.4f}, weight-decay term {wd0:.4f}, "
                  f"penalty {pen0:.4f}", flush=True)

    loss_sum = torch.tensor(window["loss_sum"], device=device)
    pen_sum = torch.tensor(window["pen_sum"], device=device)
    first_bad = torch.full((S,), -1, dtype=torch.long, device=device)
    steps_in_window = window["steps"]
    t0 = time.perf_counter()
    t_window = t0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        seeds = ",".join(str(s.seed) for s in specs)
        bar = tqdm(total=proto.iterations, initial=start_it, desc=f"{specs[0].display_label} s{seeds}",
                   dynamic_ncols=True, leave=False)

    def check_finite() -> bool:
        """Record newly diverged seeds; True when no seed is left training."""
        for s, it_bad in enumerate(first_bad.tolist()):
            if it_bad >= 0 and diverged[s] is None:
                diverged[s] = it_bad
        return all(d is not None for d in diverged)

    def finish(last_it: int) -> list[dict]:
        if bar is not None:
            bar.close()
        out = []
        wall = elapsed_before + time.perf_counter() - t0
        for s, spec in enumerate(specs):
            it = last_it if diverged[s] is None else diverged[s]
            record = {
                **base_record, "run_id": spec.run_id, "suite": spec.suite,
                "label": spec.display_label, "config": spec.identity(), "seed": spec.seed,
                "status": "complete" if diverged[s] is None else "diverged",
                "reason": None if diverged[s] is None else f"non-finite loss at iteration {diverged[s]}",
                "curves": _truncate(curves[s], it), "final": _final(_truncate(curves[s], it), it,
                                                                    data.test_y.shape[0]),
                "wall_time_s": wall,
                "median_step_ms": statistics.median(window_ms) if window_ms else float("nan"),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            records.write_json_atomic(records.record_path(results_dir, spec.run_id), record)
            out.append(record)
        ckpt_path.unlink(missing_ok=True)
        return out

    for it in range(start_it, proto.iterations):
        loss, ce, pen = run.step(proto.lr_at(it))

        # Device-side bookkeeping: no host sync per step.
        bad = ~torch.isfinite(loss.detach().reshape(-1))
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, it), first_bad)
        loss_sum += ce.detach().reshape(-1)
        pen_sum += pen.detach().float().reshape(-1)
        steps_in_window += 1
        done = it + 1
        is_eval = done % proto.eval_every == 0 or done == proto.iterations
        if (is_eval or done % FINITE_CHECK_EVERY == 0) and check_finite():
            return finish(done)
        if is_eval:
            if cuda:
                torch.cuda.synchronize()
            window_ms.append((time.perf_counter() - t_window) * 1000.0 / steps_in_window)
            evals, energies = run.evaluate(), run.layer_energies()
            losses, pens = (loss_sum / steps_in_window).tolist(), (pen_sum / steps_in_window).tolist()
            for c, (acc, _), e, lo, pe in zip(curves, evals, energies, losses, pens):
                c["iteration"].append(done)
                c["test_acc"].append(acc)
                c["test_error"].append(100.0 - acc)
                c["train_loss"].append(lo)
                c["penalty"].append(pe)
                c["energy_total"].append(sum(e.values()))
                for name, v in e.items():
                    c["energy"].setdefault(name, []).append(v)
            if bar is not None:
                bar.set_postfix(loss=f"{curves[0]['train_loss'][-1]:.3f}", acc=f"{evals[0][0]:.2f}")
            loss_sum.zero_()
            pen_sum.zero_()
            steps_in_window = 0
            t_window = time.perf_counter()
        if bar is not None:
            bar.update(1)
        stopping = stop_after is not None and done - start_it >= stop_after and done < proto.iterations
        if done < proto.iterations and (done % proto.checkpoint_every == 0 or stopping):
            check_finite()
            window = {"loss_sum": loss_sum.tolist(), "pen_sum": pen_sum.tolist(), "steps": steps_in_window}
            _save_checkpoint(ckpt_path, run, curves, window_ms, window, diverged, done,
                             elapsed_before + time.perf_counter() - t0, cuda)
        if stopping:
            if bar is not None:
                bar.close()
            return [{} for _ in specs]
    check_finite()
    return finish(proto.iterations)


def _truncate(curves: dict, iteration: int) -> dict:
    """The curves up to ``iteration`` (a diverged seed of a packed run stops counting there)."""
    keep = sum(i <= iteration for i in curves["iteration"])
    if keep == len(curves["iteration"]):
        return curves
    out = {k: v[:keep] for k, v in curves.items() if k != "energy"}
    out["energy"] = {k: v[:keep] for k, v in curves["energy"].items()}
    return out


def _final(curves: dict, iteration: int, n_test: int) -> dict:
    last = {k: (curves[k][-1] if curves[k] else float("nan"))
            for k in ("test_acc", "test_error", "train_loss", "penalty")}
    return {"iteration": iteration, **last, "n_test": n_test}


def _save_checkpoint(path, run, curves, window_ms, window, diverged, iteration, elapsed, cuda):
    import io

    state = {
        "run": run.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state() if cuda else None,
        "curves": curves, "window_ms": window_ms, "window": window, "diverged": diverged,
        "iteration": iteration, "elapsed_s": elapsed,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    records.atomic_write_bytes(path, buf.getvalue())
