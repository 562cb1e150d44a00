"""The loop every run goes through, top to bottom:

    spec -> set-up (a Run, or a PackedRun of S seeds) -> SGD steps (eval every N, checkpoint
    every M, divergence watched on the device) -> one record per run, written atomically

Evaluation uses running BN statistics on the whole test set; the reported metrics (overall
accuracy, and mean class accuracy: the mean over classes of each class's accuracy) are those
at the final iteration. Under ``data.validation`` the evaluated set is the validation split
(the test set is not in the dataset) and the record names its metrics ``val_*``. A model's
auxiliary losses (``forward_with_aux``: PointNet's feature-transform loss) are in the training
loss and logged by name as window means in ``curves["aux"]``. A run resumes from its
checkpoint exactly (model, optimiser, regularizer, batch stream, RNG states, curves).

``train_packed`` reads as its phases: set-up (or resume), step, evaluate, checkpoint, record,
each a method of ``_Loop``; the run is asked only what ``driven.Driven`` declares.

Under DDP (``training.distributed``) every rank runs this loop in lockstep; only rank 0 writes
the checkpoint, the record and the progress lines, and the ranks agree (collectively) on
divergence and on stopping.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmark import machine, records, stopping
from benchmark.config import ConfigError, RunSpec
from benchmark.correct_bits import encode
from benchmark.data.datasets.split import validation_names
from benchmark.progress import progress as progress_bar
from benchmark.training.checks import check_runs
from benchmark.training.distributed import all_mean, broadcast_flag, is_main, min_over_ranks
from benchmark.training.driven import Driven
from benchmark.training.metrics import device_name, environment
from benchmark.training.packed import setup_packed
from benchmark.training.run import resolve_threads, setup, tf32_state

# Host syncs are what make a small GPU step slow: the loss is checked for finiteness on the
# device every step and read back only every this many steps (and at every evaluation).
FINITE_CHECK_EVERY = 50


def _new_curves() -> dict:
    return {k: [] for k in ("iteration", "test_acc", "test_error", "train_loss", "penalty",
                            "energy_total", "test_mean_class_acc")} | {"energy": {}, "aux": {}}


# curve entries that are {name: [values]} (one series per layer or per auxiliary loss)
NESTED_CURVES = ("energy", "aux")


def mean_class_accuracy(correct: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the % of their examples classified
    correctly (PointNet's "avg class acc"). correct (n,) bool, labels (n,) int."""
    labels = labels.to(correct.device)
    n_class = int(labels.max()) + 1 if labels.numel() else 0
    seen = torch.bincount(labels, minlength=n_class).double()
    hit = torch.bincount(labels, weights=correct.double(), minlength=n_class)
    present = seen > 0
    return float((hit[present] / seen[present]).mean()) * 100.0


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
                 stop_after: int | None = None, pack_seeds: int | None = None) -> list[dict]:
    """Run (or resume) runs that differ by seed only as ONE program (``packed.PackedRun``; one
    run is the plain ``Run``). Every run gets its own record, written when the group ends, as the
    single run would write it (plus ``runtime.packed_seeds``); one checkpoint holds the group.

    A seed that diverges is recorded as diverged at its iteration and the others go on (its
    tensors are its own: NaNs do not cross seeds). Returns the records ([{}, ...] on stop_after).

    ``pack_seeds``: the runner's ``--pack-seeds`` (default: S), recorded as
    ``runtime.pack_seeds``. torch's thread count is ``runtime.threads`` during the run. A stop
    request (``benchmark.stopping``) writes the checkpoint and raises ``Interrupted``.
    """
    check_runs(specs)
    previous = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(specs[0].protocol.runtime.threads))
    try:  # the caller's thread count is its own (tests, a notebook): put it back
        return _train_packed(specs, Path(results_dir), progress, stop_after, pack_seeds)
    finally:
        torch.set_num_threads(previous)


def _train_packed(specs: list[RunSpec], results_dir: Path, progress: bool, stop_after: int | None,
                  pack_seeds: int | None) -> list[dict]:
    """The iterations, phase by phase (each a method of ``_Loop``, one screen each)."""
    loop = _Loop(specs, results_dir, progress, stop_after, pack_seeds)  # set-up (or resume)
    iterations = loop.proto.iterations
    for it in range(loop.start_it, iterations):
        loop.step(it)
        done = it + 1
        is_eval = done % loop.proto.eval_every == 0 or done == iterations
        if (is_eval or done % FINITE_CHECK_EVERY == 0) and loop.check_finite():
            return loop.records(done)  # no seed left training
        if is_eval:
            loop.evaluate(done)
        if loop.bar is not None:
            loop.bar.update(1)
        if loop.checkpoint(done):  # a stop request raised Interrupted; stop_after returns
            return [{} for _ in specs]
    loop.check_finite()
    return loop.records(iterations)


class _Loop:
    """One call of ``train_packed``: the run (``driven.Driven``) and what the loop keeps
    between steps (curves, the window's running sums, divergence, timing): all of it is in
    the checkpoint, so a resumed run continues exactly."""

    # ----------------------------------------------------------------- set-up
    def __init__(self, specs: list[RunSpec], results_dir: Path, progress: bool,
                 stop_after: int | None, pack_seeds: int | None) -> None:
        self.specs, self.results_dir, self.stop_after = specs, results_dir, stop_after
        self.proto = proto = specs[0].protocol
        S = len(specs)
        self.ckpt_path = records.checkpoint_path(results_dir, pack_id(specs))
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run: Driven = setup(specs[0]) if S == 1 else setup_packed(specs)
        self.run = run
        self.device = device = run.device
        self.cuda = device.type == "cuda"
        self.main = is_main()  # rank 0 (or the only process): files and log lines
        self.world_sizes = [1 if run.dist_info is None else run.dist_info.world_size]
        self.curves, self.window_ms = [_new_curves() for _ in specs], []
        self.start_it, self.elapsed_before = 0, 0.0
        # Running sums since the last evaluation (logged as window means); part of the checkpoint.
        window = {"loss_sum": [0.0] * S, "pen_sum": [0.0] * S, "steps": 0, "aux_sum": {}}
        self.diverged: list[int | None] = [None] * S  # iteration each seed's loss went non-finite
        self.resumed_from: list[int] = []
        if broadcast_flag(self.ckpt_path.exists(), device):  # every rank resumes, or none
            window = self._resume()
        self.base_record = self._describe(started, pack_seeds)
        if self.start_it == 0:
            for spec, (ce0, wd0, pen0) in zip(specs, run.iteration0(proto.optimizer.weight_decay)):
                if self.main:
                    print(f"[{spec.run_id}] iteration 0: CE {ce0:.4f}, weight-decay term "
                          f"{wd0:.4f}, penalty {pen0:.4f}", flush=True)
        self.loss_sum = torch.tensor(window["loss_sum"], device=device)
        self.pen_sum = torch.tensor(window["pen_sum"], device=device)
        self.aux_sum = {k: torch.tensor(v, device=device)
                        for k, v in window.get("aux_sum", {}).items()}
        self.first_bad = torch.full((S,), -1, dtype=torch.long, device=device)
        self.steps_in_window = window["steps"]
        self.t0 = self.t_window = time.perf_counter()
        self.bn_momentum_set = None  # what the modules hold, once the schedule has set it
        self.bar = None
        if progress and self.main:
            seeds = ",".join(str(s.seed) for s in specs)
            # line 1: under the suite's bar (line 0) on a terminal; plain lines in a log
            self.bar = progress_bar(proto.iterations, f"{specs[0].display_label} s{seeds}",
                                    initial=self.start_it, position=1)

    def _resume(self) -> dict:
        """The checkpoint's state back in the run, the RNGs and the loop; its window sums."""
        ck = load_checkpoint(self.ckpt_path, self.specs, self.device)
        self.run.load_state_dict(ck["run"])
        torch.set_rng_state(ck["rng_cpu"])
        if self.cuda and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"])
        self.curves, self.window_ms, self.diverged = ck["curves"], ck["window_ms"], ck["diverged"]
        self.start_it, self.elapsed_before = ck["iteration"], ck["elapsed_s"]
        self.resumed_from = [*ck.get("resumed_from", []), self.start_it]  # the record says so
        # per segment of the run
        self.world_sizes = [*ck.get("world_sizes", [1]), self.world_sizes[0]]
        return ck["window"]

    def _describe(self, started: str, pack_seeds: int | None) -> dict:
        """What every seed's record shares (records.make_record adds the rest)."""
        run, proto, device, S = self.run, self.proto, self.device, len(self.specs)
        dist_info = run.dist_info
        return {
            **environment(), "device": device_name(device), "synthetic": run.data.synthetic,
            # the CPU, its dispatch level, math libraries, threads, CUDA stack: what explains a
            # numerical difference between two machines (not part of the run's identity)
            "machine": machine.facts(device),
            "notes": run.model_notes,
            "regularizer_hparams_resolved": dict(run.regs[0].hparams),
            "runtime": {"compile": run.compile_mode, "bf16": run.bf16, "dtype": str(run.dtype),
                        "channels_last": run.memory_format == torch.channels_last,
                        "packed_seeds": S, "pack_seeds": pack_seeds or S,
                        "threads": torch.get_num_threads(),
                        "precision": proto.runtime.precision, **tf32_state(device)},
            # the regularizer's strength schedule in effect (SRIP's epochs), None without one
            "regularizer_schedule": run.regs[0].epoch_schedule(run.per_epoch, proto.iterations),
            "started_at": started,
            # how it ran: processes (and the world size of every resumed segment), per-rank batch
            "distributed": {"world_size": self.world_sizes[-1], "nodes": 1, "backend": None,
                            "per_rank_batch": proto.batch_size,
                            **(dist_info.record(proto.batch_size) if dist_info else {}),
                            "world_sizes": self.world_sizes},
        }

    # ----------------------------------------------------------------- step
    def step(self, it: int) -> None:
        """Iteration ``it``: the BN momentum and rate of the schedule, the run's step, and the
        window's sums kept on the device (no host sync per step)."""
        run, proto = self.run, self.proto
        bn_momentum = proto.bn_momentum_at(it)
        # set on the modules only when the schedule moves (every `every` iterations)
        if bn_momentum is not None and bn_momentum != self.bn_momentum_set:
            run.set_bn_momentum(bn_momentum)
            self.bn_momentum_set = bn_momentum
        loss, ce, pen = run.step(proto.lr_at(it))
        for name, term in run.last_aux.items():
            value = term.detach().float().reshape(-1)
            self.aux_sum[name] = self.aux_sum[name] + value if name in self.aux_sum else value.clone()
        bad = ~torch.isfinite(loss.detach().reshape(-1))
        self.first_bad = torch.where(bad & (self.first_bad < 0),
                                     torch.full_like(self.first_bad, it), self.first_bad)
        self.loss_sum += ce.detach().reshape(-1)
        self.pen_sum += pen.detach().float().reshape(-1)
        self.steps_in_window += 1

    def check_finite(self) -> bool:
        """Record newly diverged seeds (a host sync); True when no seed is left training."""
        bad = self.first_bad
        if self.run.dist_info is not None:  # the first iteration any rank saw a non-finite loss
            never = torch.iinfo(torch.long).max
            bad = min_over_ranks(torch.where(self.first_bad < 0, never, self.first_bad))
            bad = torch.where(bad == never, -1, bad)
        for s, it_bad in enumerate(bad.tolist()):
            if it_bad >= 0 and self.diverged[s] is None:
                self.diverged[s] = it_bad
        return all(d is not None for d in self.diverged)

    # ----------------------------------------------------------------- evaluate
    def evaluate(self, done: int) -> None:
        """After ``done`` iterations: the window's step time and means, the evaluation and the
        layer energies appended to every seed's curves; the window starts again."""
        run, S, n = self.run, len(self.specs), self.steps_in_window
        if self.cuda:
            torch.cuda.synchronize()
        self.window_ms.append((time.perf_counter() - self.t_window) * 1000.0 / n)
        evals, energies = run.evaluate(), run.layer_energies()
        # the CE of this rank's shard: the mean over ranks is the global batch's
        losses = all_mean(self.loss_sum / n).tolist()
        pens = (self.pen_sum / n).tolist()
        auxes = [{k: v.tolist()[s] / n for k, v in self.aux_sum.items()} for s in range(S)]
        test_y, hits = run.data.test_y, run.last_correct
        for s, (c, (acc, _), e, lo, pe) in enumerate(zip(self.curves, evals, energies, losses, pens)):
            c.setdefault("test_mean_class_acc", []).append(
                mean_class_accuracy(hits[s], test_y) if hits else float("nan"))
            for name, v in auxes[s].items():
                c.setdefault("aux", {}).setdefault(name, []).append(v)
            c["iteration"].append(done)
            c["test_acc"].append(acc)
            c["test_error"].append(100.0 - acc)
            c["train_loss"].append(lo)
            c["penalty"].append(pe)
            c["energy_total"].append(sum(e.values()))
            for name, v in e.items():
                c["energy"].setdefault(name, []).append(v)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.curves[0]['train_loss'][-1]:.3f}",
                                 acc=f"{evals[0][0]:.2f}")
        self.loss_sum.zero_()
        self.pen_sum.zero_()
        self.aux_sum = {}
        self.steps_in_window = 0
        self.t_window = time.perf_counter()

    # ----------------------------------------------------------------- checkpoint
    def checkpoint(self, done: int) -> bool:
        """Write the checkpoint when it is due (every ``checkpoint_every``, or before leaving);
        True when this call leaves now (``stop_after``); raises Interrupted on a stop request."""
        proto, last = self.proto, self.proto.iterations
        leaving = (self.stop_after is not None and done - self.start_it >= self.stop_after
                   and done < last)
        # a signal may reach the ranks at different steps: they leave together
        interrupted = (broadcast_flag(stopping.requested(), self.device)
                       if self.run.dist_info is not None else stopping.requested()) and done < last
        if done < last and (done % proto.checkpoint_every == 0 or leaving or interrupted):
            self.check_finite()
            window = {"loss_sum": all_mean(self.loss_sum).tolist(),
                      "pen_sum": self.pen_sum.tolist(), "steps": self.steps_in_window,
                      "aux_sum": {k: v.tolist() for k, v in self.aux_sum.items()}}
            if self.main:
                _save_checkpoint(self.ckpt_path, self.run, self.curves, self.window_ms, window,
                                 self.diverged, done, self._wall(), self.cuda, self.specs,
                                 self.resumed_from, self.world_sizes)
        if leaving or interrupted:
            if self.bar is not None:
                self.bar.close()
            if interrupted:
                raise stopping.Interrupted(stopping.signum())
            return True
        return False

    def _wall(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    # ----------------------------------------------------------------- record
    def records(self, last_it: int) -> list[dict]:
        """Every seed's record (complete, or diverged at its iteration), written by rank 0,
        and the checkpoint removed."""
        if self.bar is not None:
            self.bar.close()
        out = []
        wall = self._wall()
        for s, spec in enumerate(self.specs):
            div = self.diverged[s]
            it = last_it if div is None else div
            curves = _truncate(self.curves[s], it)
            evaluation = {"curves": curves,
                          "final": _final(curves, it, self.run.data.test_y.shape[0]),
                          **_correct_of(self.run, s, div is None
                                        and self.curves[s]["iteration"][-1:] == [it])}
            if spec.protocol.data.validation:  # evaluated on held-out training images
                evaluation = validation_names(evaluation)
            record = records.make_record(
                spec, status="complete" if div is None else "diverged",
                reason=None if div is None else f"non-finite loss at iteration {div}",
                **self.base_record, **evaluation, wall_time_s=wall,
                resumed_from=self.resumed_from,
                median_step_ms=statistics.median(self.window_ms) if self.window_ms else float("nan"),
                finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            out.append(record)
            if not self.main:
                continue
            records.check_claim(self.results_dir, spec.run_id)  # a deleted lock file: see records
            records.write_json_atomic(records.record_path(self.results_dir, spec.run_id), record)
        if self.main:
            self.ckpt_path.unlink(missing_ok=True)
        return out


def _truncate(curves: dict, iteration: int) -> dict:
    """The curves up to ``iteration`` (a diverged seed of a packed run stops counting there)."""
    keep = sum(i <= iteration for i in curves["iteration"])
    if keep == len(curves["iteration"]):
        return curves
    out = {k: v[:keep] for k, v in curves.items() if k not in NESTED_CURVES}
    for nested in NESTED_CURVES:
        if nested in curves:
            out[nested] = {k: v[:keep] for k, v in curves[nested].items()}
    return out


def _correct_of(run: Driven, s: int, final_eval: bool) -> dict:
    """``{"final_correct": ...}``: seed s's per-image correctness at the final evaluation
    (benchmark/correct_bits.py), for paired (McNemar) standard errors; {} when unknown."""
    hits = run.last_correct
    if not final_eval or not hits or s >= len(hits):
        return {}
    return {"final_correct": encode(hits[s])}


def _final(curves: dict, iteration: int, n_test: int) -> dict:
    last = {k: (curves[k][-1] if curves.get(k) else float("nan"))
            for k in ("test_acc", "test_error", "train_loss", "penalty", "test_mean_class_acc")}
    aux = {k: v[-1] for k, v in curves.get("aux", {}).items() if v}
    return {"iteration": iteration, **last, "n_test": n_test, **({"aux": aux} if aux else {})}


def checkpoint_run_ids(path: Path) -> list[str] | None:
    """The run ids a checkpoint belongs to, or None (unreadable, or written before they were
    stored)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file: "unknown"
        return None
    ids = ck.get("run_ids") if isinstance(ck, dict) else None
    return list(ids) if ids else None


def load_checkpoint(path: Path, specs: list[RunSpec], device: torch.device) -> dict:
    """The checkpoint at ``path`` if it belongs to exactly these runs; one-line ConfigError
    naming the file otherwise (a corrupt file, or one copied or renamed from another run).
    Checkpoints written before run ids were stored in them are accepted as they are."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ck, dict) or "run" not in ck or "iteration" not in ck:
            raise ValueError("not a checkpoint of this engine")
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises on a damaged file
        raise ConfigError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to "
                          "restart the run from the beginning") from None
    want = sorted(s.run_id for s in specs)
    if ck.get("run_ids") is not None and sorted(ck["run_ids"]) != want:
        raise ConfigError(f"checkpoint '{path}' belongs to run(s) {', '.join(sorted(ck['run_ids']))}, "
                          f"not {', '.join(want)}; move it away to start this run from the beginning")
    return ck


def _save_checkpoint(path, run, curves, window_ms, window, diverged, iteration, elapsed, cuda, specs,
                     resumed_from, world_sizes=(1,)):
    state = {
        "run_ids": [s.run_id for s in specs],
        "run": run.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state() if cuda else None,
        "curves": curves, "window_ms": window_ms, "window": window, "diverged": diverged,
        "iteration": iteration, "elapsed_s": elapsed, "resumed_from": resumed_from,
        "world_sizes": list(world_sizes),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    records.atomic_write(path, buf.getvalue())
