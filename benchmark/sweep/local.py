"""The local sweep: every run of a suite on this machine, in this process (``jobs == 1``) or one
worker process per run (``jobs > 1``; one GPU each, ``CUDA_VISIBLE_DEVICES``, when GPUs exist).
At most ``jobs`` runs are handed out at a time, so a stop request holds back everything not yet
started. Crash-safe, resumable, safe to start twice on one results directory
(``claims.py``).

With ``pack_seeds = S > 1``, runs that differ only by seed go together, up to S at a time, as one
packed program (``benchmark.training.packed``) and each run gets its own record; a packed group
resumes from its checkpoint only as the same group of runs.

Stopping (``benchmark.stopping``): SIGINT/SIGTERM stop the dispatching at once, workers are sent
SIGTERM, every running run checkpoints and stops, locks are released, and ``run_suite`` raises
``Interrupted``. A write failing with ENOSPC stops the sweep the same way with ``DiskFull``
instead of marking every remaining run ``failed``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Iterable, Iterator

import torch

from benchmark import stopping
from benchmark.config import ConfigError, RunSpec
from benchmark.progress import progress as progress_bar
from benchmark.records import (
    checkpoint_path,
    load_record,
    record_path,
)
from benchmark.stopping import DiskFull
from benchmark.sweep.attempt import pack_by_seed, train_fn_path, try_run, try_run_pack
from benchmark.sweep.claims import (
    BUSY,
    SKIPPED,
    TrainFn,
    acquire,
    check_packing,
    clean_orphaned_pack_checkpoints,
    needs_run,
    prepare_results_dir,
    release,
    signature,
    wants_run,
    write_failure_record,
)
from benchmark.sweep.status import FINAL, count_states, lock_is_held, suite_status
from benchmark.sweep.worker import (
    EXIT_BUSY,
    EXIT_DISK_FULL,
    EXIT_SKIPPED,
    INTERRUPTED_CODES,
    spec_to_dict,
)


class InProcess:
    def __init__(self, train_fn, retry_failed, progress, pack_seeds=1):
        self.train_fn, self.retry_failed, self.progress = train_fn, retry_failed, progress
        self.pack_seeds = pack_seeds

    def map(self, units: list[list[RunSpec]], results_dir: Path, seen: dict) -> Iterator[tuple[RunSpec, str]]:
        for unit in units:
            stopping.raise_if_requested()
            if self.pack_seeds == 1:
                yield unit[0], try_run(unit[0], results_dir, self.train_fn,
                                       retry_failed=self.retry_failed, seen=seen[unit[0].run_id],
                                       progress=self.progress)
                continue
            outcomes = try_run_pack(unit, results_dir, retry_failed=self.retry_failed, seen=seen,
                                    progress=self.progress, pack_seeds=self.pack_seeds)
            for spec in unit:
                yield spec, outcomes[spec.run_id]


class Workers:
    def __init__(self, jobs: int, train_fn, retry_failed: bool, devices: list[str] | None,
                 pack_seeds: int = 1):
        self.jobs, self.retry_failed, self.pack_seeds = jobs, retry_failed, pack_seeds
        self.train_fn = train_fn_path(train_fn)
        self.devices = visible_cuda_devices() if devices is None else list(devices)
        self.slots: Queue = Queue()
        for i in range(jobs):
            self.slots.put(self.devices[i % len(self.devices)] if self.devices else None)
        self.procs: set[subprocess.Popen] = set()
        self.procs_lock = threading.Lock()
        self.disk_full: str | None = None

    def _env(self, device: str | None) -> dict[str, str]:
        # Threads are not set here: the engine sets runtime.threads in every process, so a
        # run's numbers do not depend on --jobs (docs/sweeps.md).
        env = dict(os.environ)
        # the repository root (above benchmark/), so a worker imports `benchmark.records`, never
        # a top-level `records` that would shadow an installed package of that name
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        return env

    def _spawn(self, job: dict, log: Path) -> int:
        """Run ``job`` in a worker process on a free slot (GPU); its exit code."""
        device = self.slots.get()
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "benchmark.sweep"],
                                        stdin=subprocess.PIPE, stdout=out, stderr=out,
                                        env=self._env(device))
                with self.procs_lock:
                    self.procs.add(proc)
                try:
                    proc.communicate(json.dumps(job).encode())
                finally:
                    with self.procs_lock:
                        self.procs.discard(proc)
                return proc.returncode
        finally:
            self.slots.put(device)

    def stop_workers(self) -> None:
        """Ask every running worker to checkpoint and stop (SIGTERM; a worker that already got
        the terminal's SIGINT ignores the second request)."""
        with self.procs_lock:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _pack(self, unit: list[RunSpec], results_dir: Path, seen: dict) -> dict[str, str]:
        """A packed group in one worker process; outcomes read back from the records."""
        job = {"specs": [spec_to_dict(s) for s in unit], "seen": {s.run_id: seen[s.run_id] for s in unit},
               "results_dir": str(results_dir), "retry_failed": self.retry_failed,
               "pack_seeds": self.pack_seeds}
        started = time.time()
        log = results_dir / "logs" / f"{unit[0].run_id}-pack.log"
        code = self._spawn(job, log)
        if code == EXIT_DISK_FULL:
            self.disk_full = f"disk full in a worker (see logs/{log.name})"
        outcomes = {}
        for spec in unit:
            record = load_record(record_path(results_dir, spec.run_id))
            if record is not None and record["status"] in FINAL:
                outcomes[spec.run_id] = record["status"]
            elif lock_is_held(results_dir, spec.run_id):
                outcomes[spec.run_id] = BUSY
            elif code not in INTERRUPTED_CODES and code not in (0, EXIT_DISK_FULL) and not stopping.requested():
                if needs_run(spec, results_dir, self.retry_failed, seen[spec.run_id]):
                    write_failure_record(spec, results_dir, f"packed worker exited with code "
                                         f"{code}; see logs/{log.name}", started)
                outcomes[spec.run_id] = "failed"
            else:
                outcomes[spec.run_id] = record["status"] if record else "interrupted"
        return outcomes

    def _one(self, spec: RunSpec, results_dir: Path, seen: Any) -> str:
        job = {"spec": spec_to_dict(spec), "spec_id": spec.run_id, "seen": seen,
               "results_dir": str(results_dir), "train_fn": self.train_fn,
               "retry_failed": self.retry_failed}
        started = time.time()
        code = self._spawn(job, results_dir / "logs" / f"{spec.run_id}.log")
        if code == EXIT_BUSY:
            return BUSY
        if code == EXIT_SKIPPED:
            return SKIPPED
        if code == EXIT_DISK_FULL:
            self.disk_full = f"disk full in a worker (see logs/{spec.run_id}.log)"
        elif code != 0 and code not in INTERRUPTED_CODES and not stopping.requested():
            # The worker died without the engine writing a record (out of memory, segfault...).
            # (While stopping, a worker hit by Ctrl-C during its start-up exits 1: not a failure.)
            lock = acquire(results_dir, spec.run_id)
            if lock is None:
                return BUSY
            try:
                if needs_run(spec, results_dir, self.retry_failed, seen):
                    write_failure_record(spec, results_dir, f"worker process exited with code "
                                         f"{code}; see logs/{spec.run_id}.log", started)
            finally:
                release(lock, results_dir, spec.run_id)
        record = load_record(record_path(results_dir, spec.run_id))
        return record["status"] if record else "interrupted"

    def map(self, units: list[list[RunSpec]], results_dir: Path, seen: dict) -> Iterator[tuple[RunSpec, str]]:
        """At most ``jobs`` units in flight: a stop request (or a full disk) holds back the rest."""
        todo = iter(units)
        running: dict = {}
        signalled = False
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while True:
                while (len(running) < self.jobs and not stopping.requested()
                       and self.disk_full is None):
                    unit = next(todo, None)
                    if unit is None:
                        break
                    fut = (pool.submit(self._pack, unit, results_dir, seen) if self.pack_seeds > 1
                           else pool.submit(self._one, unit[0], results_dir, seen[unit[0].run_id]))
                    running[fut] = unit
                if not running:
                    break
                finished, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                if stopping.requested() and not signalled:
                    self.stop_workers()
                    signalled = True
                for fut in finished:
                    unit = running.pop(fut)
                    result = fut.result()
                    for spec in unit:
                        yield spec, result if self.pack_seeds == 1 else result[spec.run_id]
        stopping.raise_if_requested()
        if self.disk_full is not None:
            raise DiskFull(self.disk_full)


def visible_cuda_devices() -> list[str]:
    """CUDA device ids a worker may be pinned to (respects CUDA_VISIBLE_DEVICES); [] without GPUs."""
    try:
        n = torch.cuda.device_count()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


@dataclass
class RunSummary:
    total: int
    executed: dict[str, str] = field(default_factory=dict)  # run_id -> status, run by this call
    table: Any = None  # suite_status() at the end (pandas DataFrame)
    jobs: list = field(default_factory=list)  # submitit jobs (executor="slurm")
    reporting: bool = True  # False on the ranks > 0 of a distributed job (sweep.ddp)

    def counts(self) -> dict[str, int]:
        return count_states(self.table)

    @property
    def failed(self) -> int:
        return self.counts()["failed"]

    @property
    def ok(self) -> bool:
        c = self.counts()
        return c["failed"] == 0 and c["pending"] == 0 and c["running"] == 0

    def __str__(self) -> str:
        c = self.counts()
        if self.jobs:
            return (f"{self.total} runs: submitted {len(self.jobs)} as Slurm job array "
                    f"{str(self.jobs[0].job_id).split('_')[0]}, {c['done']} already done; "
                    "follow with `python -m benchmark status --watch`")
        return (f"{self.total} runs: {c['done']} done, {c['failed']} failed, {c['running']} running, "
                f"{c['pending']} pending ({len(self.executed)} run by this call)")


def run_suite(
    specs: Iterable[RunSpec],
    results_dir: str | Path,
    jobs: int = 1,
    retry_failed: bool = False,
    train_fn: TrainFn | str | None = None,
    progress: bool = True,
    *,
    wait_for_others: bool = True,
    poll_s: float = 2.0,
    devices: list[str] | None = None,
    pack_seeds: int = 1,
) -> RunSummary:
    """Run every run of ``specs`` that has no final record; see the module docstring.

    ``jobs``: runs at once (>1: one worker process per run, one GPU each when GPUs exist;
    0 means one per visible GPU). ``train_fn``: ``benchmark.training.train`` by default (or "module:function").
    ``wait_for_others``: at the end, wait for runs other processes hold, so the summary is final.
    ``pack_seeds``: train up to this many runs that differ only by seed as one packed program
    (refused with ConfigError for a cell whose finished runs were trained under another value).
    Raises ``stopping.Interrupted`` after SIGINT/SIGTERM (runs checkpointed, locks released) and
    ``stopping.DiskFull`` when a write fails for lack of space; ``benchmark.cli`` turns both into
    one line.
    """
    if isinstance(pack_seeds, bool) or not isinstance(pack_seeds, int) or pack_seeds < 1:
        raise ConfigError(f"pack_seeds must be an integer >= 1, got {pack_seeds!r}")
    if pack_seeds > 1 and train_fn is not None:
        raise ConfigError("pack_seeds > 1 runs with the default engine only (got a custom train_fn)")

    results_dir = prepare_results_dir(results_dir)
    specs = list({s.run_id: s for s in specs}.values())
    if jobs == 0:
        jobs = max(1, len(visible_cuda_devices() if devices is None else devices))
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1 (or 0 for one per GPU), got {jobs}")
    seen = {s.run_id: signature(record_path(results_dir, s.run_id)) for s in specs}
    todo = []
    for s in specs:
        record = load_record(record_path(results_dir, s.run_id))
        if wants_run(record, retry_failed):
            todo.append(s)
        elif record["status"] in FINAL:  # killed between writing the record and this cleanup
            checkpoint_path(results_dir, s.run_id).unlink(missing_ok=True)
    check_packing(specs, todo, results_dir, pack_seeds)
    clean_orphaned_pack_checkpoints(results_dir)
    dispatcher = (InProcess(train_fn, retry_failed, progress, pack_seeds) if jobs == 1
                  else Workers(jobs, train_fn, retry_failed, devices, pack_seeds))
    summary = RunSummary(total=len(specs))
    bar = progress_bar(len(specs), (specs[0].suite or "runs") if specs else "runs",
                       initial=len(specs) - len(todo), unit="run", enabled=progress)

    def dispatch(batch: list[RunSpec]) -> list[RunSpec]:
        """Run ``batch``; return the runs another process held (BUSY)."""
        busy = []
        units = pack_by_seed(batch, pack_seeds) if pack_seeds > 1 else [[s] for s in batch]
        for spec, outcome in dispatcher.map(units, results_dir, seen):
            if outcome == BUSY:
                busy.append(spec)
                continue
            if outcome != SKIPPED:
                summary.executed[spec.run_id] = outcome
            bar.update(1)
        return busy

    with stopping.signals_request_stop():
        try:
            deferred = dispatch(todo)
            while deferred and wait_for_others:
                stopping.raise_if_requested()
                ready, waiting = [], []
                for spec in deferred:
                    if not needs_run(spec, results_dir, retry_failed, seen[spec.run_id]):
                        bar.update(1)
                    elif lock_is_held(results_dir, spec.run_id):
                        waiting.append(spec)
                    else:  # its holder finished without a final record, or died: our turn
                        ready.append(spec)
                deferred = waiting + dispatch(ready)
                if deferred:
                    bar.set_postfix_str(f"waiting for {len(deferred)} run(s) held by other processes")
                    time.sleep(poll_s)
        finally:
            bar.close()
    summary.table = suite_status(specs, results_dir)
    return summary
