"""The local sweep runner: crash-safe, resumable, safe to start twice on one results directory.

For every run of a suite, in order:

1. a valid ``complete`` or ``diverged`` record is final: skip it; a ``failed`` one is rerun only
   with ``retry_failed``;
2. take the run's file lock (``locks/<run_id>.lock``) without waiting; if another process holds
   it, move on and come back at the end;
3. holding the lock, look again (another runner may have just finished it), remove temp files
   a killed writer left for this run, and call the engine, which resumes from
   ``checkpoints/<run_id>.pt`` and writes ``runs/<run_id>.json`` atomically.

Records and checkpoints are only ever replaced with ``os.replace``, so ``kill -9`` at any moment
leaves the old file or the new one, never half of one; the OS drops a dead process's lock.
Lock files themselves may remain after a run (they are empty and harmless).

With ``pack_seeds = S > 1``, runs that differ only by seed go together, up to S at a time, as one
packed program (``benchmark.training.packed``): the runner takes every run's lock, runs those that still
need it as one ``engine.train_packed`` call, and each run gets its own record. A packed group
resumes from its checkpoint only as the same group of runs.

With ``jobs > 1`` every run (or packed group) gets its own worker process (``python -m benchmark.runner``) that
takes the lock itself, one GPU each (``CUDA_VISIBLE_DEVICES``) when CUDA devices exist; its
output goes to ``logs/<run_id>.log``. With ``jobs == 1`` runs happen in this process. At most
``jobs`` runs are handed out at a time, so a stop request holds back everything not yet started.

Stopping (``benchmark.stopping``): SIGINT/SIGTERM stop the dispatching at once, workers are sent
SIGTERM, every running run checkpoints and stops, locks are released, and ``run_suite`` raises
``Interrupted``. A write failing with ENOSPC stops the sweep the same way with ``DiskFull``
instead of marking every remaining run ``failed``.

A ``failed`` record whose cause was the input (``cause: "input"``: a ConfigError met during
set-up, such as a missing dataset) is rerun without ``retry_failed``: fixing the input and
starting the same command again just works.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Iterable, Iterator

import filelock

from benchmark import stopping
from benchmark.config import ConfigError, Protocol, RunSpec, from_dict
from benchmark.records import (
    SCHEMA_VERSION,
    LostClaim,
    checkpoint_path,
    drop_claim,
    git_state,
    hold_claim,
    load_record,
    lock_path,
    record_path,
    write_json_atomic,
)
from benchmark.status import FINAL, count_states, lock_is_held, suite_status
from benchmark.stopping import DiskFull, Interrupted

BUSY = "busy"        # another process holds the run's lock
SKIPPED = "skipped"  # nothing to do after all (finished by someone else meanwhile)
EXIT_BUSY = 75       # worker exit code for BUSY (EX_TEMPFAIL)
EXIT_SKIPPED = 76
EXIT_DISK_FULL = 77
INTERRUPTED_CODES = {-signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP, 128 + signal.SIGINT,
                     128 + signal.SIGTERM}
TrainFn = Callable[..., Any]


# --------------------------------------------------------------------------------------------
# Results directory and per-run checks


def prepare_results_dir(results_dir: str | Path) -> Path:
    """Create ``runs/``, ``checkpoints/``, ``locks/``, ``logs/``; one-line ConfigError if unusable."""
    root = Path(results_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"results directory '{root}' is not a directory")
    for sub in ("runs", "checkpoints", "locks", "logs"):
        d = root / sub
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.listdir(d)
            probe = d / f".probe-{os.getpid()}-{threading.get_ident()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"results directory '{root}' is not usable ({d.name}/: {exc.strerror or exc}); "
                "pick a readable, writable directory"
            ) from None
    return root


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file now at ``path`` (a new record is a new inode: os.replace)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _caused_by_input(record: dict) -> bool:
    # Records written before ``cause`` existed say it in their reason.
    return record.get("cause") == "input" or str(record.get("reason") or "").startswith(
        ("runner: ConfigError:", "runner (packed): ConfigError:"))


def _retryable(record: dict, retry_failed: bool) -> bool:
    """A failed record is rerun with ``retry_failed``, or always when the input caused it (the
    user fixed it; if not, it fails again in set-up, before any training)."""
    return record["status"] == "failed" and (retry_failed or _caused_by_input(record))


def _wants_run(record: dict | None, retry_failed: bool) -> bool:
    if record is None:
        return True
    return _retryable(record, retry_failed)


def _needs_run(spec: RunSpec, results_dir: Path, retry_failed: bool, seen: Any) -> bool:
    """Does the run still need running? A failed record is retried only if it is the one we saw
    when the suite started (a newer one was written by another runner retrying it)."""
    path = record_path(results_dir, spec.run_id)
    record = load_record(path)
    if record is None:
        return True
    if record["status"] in FINAL:
        return False
    return _retryable(record, retry_failed) and _signature(path) == seen


def _clean_run_temporaries(results_dir: Path, run_id: str) -> int:
    """Temp files of this run only (other runs' writers may be alive): call with the lock held."""
    n = 0
    for pattern in (f"runs/.{run_id}.json.*.tmp", f"checkpoints/.{run_id}.pt.*.tmp"):
        for tmp in results_dir.glob(pattern):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def _lock(results_dir: Path, run_id: str) -> filelock.FileLock:
    path = lock_path(results_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path), timeout=0)  # default mode: the umask decides


def _acquire(results_dir: Path, run_id: str) -> filelock.FileLock | None:
    """The run's lock, taken without waiting, and registered as this process's claim (checked
    again before the record is written: ``records.check_claim``); None if held elsewhere."""
    lock = _lock(results_dir, run_id)
    try:
        lock.acquire()
    except filelock.Timeout:
        return None
    try:
        hold_claim(results_dir, run_id)
    except FileNotFoundError:  # deleted between its creation and our flock: take it anew
        lock.release()
        return _acquire(results_dir, run_id)
    return lock


def _release(lock: filelock.FileLock, results_dir: Path, run_id: str) -> None:
    drop_claim(results_dir, run_id)
    lock.release()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# --------------------------------------------------------------------------------------------
# Running one run under its lock (shared by the in-process path, workers and Slurm jobs)


def resolve_train_fn(train_fn: TrainFn | str | None) -> TrainFn:
    if train_fn is None:
        train_fn = "benchmark.training:train"
    if isinstance(train_fn, str):
        module, _, qualname = train_fn.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    return train_fn


def _train_fn_path(train_fn: TrainFn | str | None) -> str:
    if train_fn is None or isinstance(train_fn, str):
        return train_fn or "benchmark.training:train"
    module, qualname = train_fn.__module__, train_fn.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise ConfigError("train_fn must be a module-level function importable by worker "
                          f"processes when jobs > 1 (got {module}.{qualname})")
    return f"{module}:{qualname}"


def try_run(
    spec: RunSpec,
    results_dir: Path,
    train_fn: TrainFn | str | None,
    *,
    retry_failed: bool,
    seen: Any,
    progress: bool = False,
    wait: bool = False,
    poll_s: float = 1.0,
) -> str:
    """Take the lock and run ``spec`` if it still needs it. Returns the record's status, BUSY
    (lock held elsewhere, ``wait=False``, or the lock file was replaced during the run) or
    SKIPPED (finished by someone else). Raises Interrupted (checkpoint written, no record) and
    DiskFull (no record, nothing else marked failed)."""
    while (lock := _acquire(results_dir, spec.run_id)) is None:
        if not wait:
            return BUSY
        stopping.raise_if_requested()
        time.sleep(poll_s)
    try:
        if not _needs_run(spec, results_dir, retry_failed, seen):
            return SKIPPED
        _clean_run_temporaries(results_dir, spec.run_id)
        path = record_path(results_dir, spec.run_id)
        before = _signature(path)
        started = time.time()
        try:
            resolve_train_fn(train_fn)(spec, results_dir, progress=progress)
        except LostClaim:
            return BUSY
        except Exception as exc:  # the engine does not record exceptions: the runner does
            _record_exception(exc, [spec], results_dir, {spec.run_id: before}, started, "runner")
        record = load_record(path)
        return record["status"] if record else "failed"
    finally:
        _release(lock, results_dir, spec.run_id)


def _record_exception(exc: Exception, specs: list[RunSpec], results_dir: Path,
                      before: dict[str, Any], started: float, who: str) -> None:
    """A ``failed`` record for each run the exception left without a new record; a full disk
    raises DiskFull instead (writing more records would fail too, and the runs are not at fault)."""
    if stopping.is_disk_full(exc):
        raise DiskFull(f"disk full writing '{getattr(exc, 'filename', None) or results_dir}'") from exc
    cause = "input" if isinstance(exc, ConfigError) else None
    for spec in specs:
        if _signature(record_path(results_dir, spec.run_id)) == before[spec.run_id]:
            try:
                write_failure_record(spec, results_dir, f"{who}: {_reason(exc)}", started, cause)
            except OSError as werr:
                if stopping.is_disk_full(werr):
                    raise DiskFull(f"disk full writing the failure record of {spec.run_id} "
                                   f"under '{results_dir}'") from exc
                raise


def try_run_pack(
    specs: list[RunSpec],
    results_dir: Path,
    *,
    retry_failed: bool,
    seen: dict[str, Any],
    progress: bool = False,
    pack_seeds: int | None = None,
) -> dict[str, str]:
    """``try_run`` for a group of runs differing by seed: take each run's lock without waiting,
    train those that still need it as one packed program. Returns run_id -> outcome.
    ``pack_seeds``: the ``--pack-seeds`` of this call, recorded in each record's runtime."""
    from benchmark.training import pack_id, train_packed

    outcomes: dict[str, str] = {}
    held: dict[str, filelock.FileLock] = {}
    try:
        for spec in specs:
            lock = _acquire(results_dir, spec.run_id)
            if lock is None:
                outcomes[spec.run_id] = BUSY
                continue
            held[spec.run_id] = lock
            if not _needs_run(spec, results_dir, retry_failed, seen.get(spec.run_id)):
                outcomes[spec.run_id] = SKIPPED
        todo = [s for s in specs if s.run_id not in outcomes]
        if not todo:
            return outcomes
        for spec in todo:
            _clean_run_temporaries(results_dir, spec.run_id)
        _clean_run_temporaries(results_dir, pack_id(todo))
        before = {s.run_id: _signature(record_path(results_dir, s.run_id)) for s in todo}
        started = time.time()
        try:
            train_packed(todo, results_dir, progress=progress, pack_seeds=pack_seeds)
        except LostClaim:
            pass  # the runs without a new record are read back below as BUSY
        except Exception as exc:  # the engine does not record exceptions: the runner does
            _record_exception(exc, todo, results_dir, before, started, "runner (packed)")
        for spec in todo:
            path = record_path(results_dir, spec.run_id)
            record = load_record(path)
            if _signature(path) == before[spec.run_id]:
                # no new record: the claim was lost (LostClaim), the holder of the new lock has it
                outcomes[spec.run_id] = (record["status"] if record and record["status"] in FINAL
                                         else BUSY)
            else:
                outcomes[spec.run_id] = record["status"] if record else "failed"
        return outcomes
    finally:
        for run_id, lock in held.items():
            _release(lock, results_dir, run_id)


def pack_by_seed(specs: list[RunSpec], pack_seeds: int) -> list[list[RunSpec]]:
    """Groups of up to ``pack_seeds`` runs that differ only by seed, in first-seen order."""
    groups: dict[str, list[list[RunSpec]]] = {}
    for spec in specs:
        ident = spec.identity()
        ident.pop("seed")
        key = json.dumps(ident, sort_keys=True)
        chunks = groups.setdefault(key, [[]])
        if len(chunks[-1]) == pack_seeds:
            chunks.append([])
        chunks[-1].append(spec)
    return [chunk for chunks in groups.values() for chunk in chunks]


def write_failure_record(spec: RunSpec, results_dir: Path, reason: str, started: float,
                         cause: str | None = None) -> None:
    """A valid ``failed`` record for a run whose engine could not write one (crash, bug).
    ``cause="input"``: a bad input met during set-up (rerun without --retry-failed)."""
    now = time.time()
    iso = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat()  # noqa: E731
    write_json_atomic(record_path(results_dir, spec.run_id), {
        "schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "suite": spec.suite,
        "label": spec.display_label, "status": "failed", "reason": reason,
        "config": spec.identity(), "seed": spec.seed, "git": git_state(),
        "versions": {"python": platform.python_version()}, "device": None,
        "synthetic": spec.dataset.startswith("synthetic"), "notes": ["record written by the runner"],
        "started_at": iso(started), "finished_at": iso(now), "wall_time_s": now - started,
        "median_step_ms": None, "curves": {}, "final": {}, "cause": cause,
    })


# --------------------------------------------------------------------------------------------
# Spec <-> JSON (worker processes)


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    return {**spec.identity(), "label": spec.label, "suite": spec.suite}


def spec_from_dict(d: dict[str, Any]) -> RunSpec:
    return RunSpec(
        protocol=from_dict(Protocol, d["protocol"]), dataset=d["dataset"], model=d["model"],
        regularizer=d["regularizer"], seed=int(d["seed"]), model_kwargs=d.get("model_kwargs", {}),
        regularizer_hparams=d.get("regularizer_hparams", {}), label=d.get("label", ""),
        suite=d.get("suite"),
    )


def _worker_main() -> int:
    """``python -m benchmark.runner`` with a JSON job on stdin: run it, exit with its outcome.
    SIGINT/SIGTERM: checkpoint, release the locks, exit 128 + signal number."""
    job = json.loads(sys.stdin.read())
    with stopping.signals_request_stop():
        try:
            return _worker_job(job)
        except Interrupted as stop:
            print(f"runner: interrupted by {stop}; checkpoint written", file=sys.stderr)
            return stop.exit_code
        except DiskFull as exc:
            print(f"runner: {exc}", file=sys.stderr)
            return EXIT_DISK_FULL


def _worker_job(job: dict) -> int:
    if "specs" in job:  # a packed group: every run writes its own record; exit 0
        specs = [spec_from_dict(d) for d in job["specs"]]
        seen = {k: tuple(v) if v is not None else None for k, v in job["seen"].items()}
        outcomes = try_run_pack(specs, Path(job["results_dir"]), retry_failed=job["retry_failed"],
                                seen=seen, progress=False, pack_seeds=job.get("pack_seeds"))
        for run_id, outcome in outcomes.items():
            print(f"runner: {run_id} -> {outcome}", file=sys.stderr)
        return 0
    spec = spec_from_dict(job["spec"])
    if spec.run_id != job["spec_id"]:
        print(f"spec round trip changed the run id ({job['spec_id']} -> {spec.run_id})", file=sys.stderr)
        return 2
    seen = tuple(job["seen"]) if job["seen"] is not None else None
    outcome = try_run(spec, Path(job["results_dir"]), job["train_fn"],
                      retry_failed=job["retry_failed"], seen=seen, progress=False)
    print(f"runner: {spec.run_id} -> {outcome}", file=sys.stderr)
    return {BUSY: EXIT_BUSY, SKIPPED: EXIT_SKIPPED}.get(outcome, 0)


# --------------------------------------------------------------------------------------------
# Dispatchers: in this process, or one worker process per run. Both hand out one unit at a time
# and look at the stop flag before each.


class _InProcess:
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


class _Workers:
    def __init__(self, jobs: int, train_fn, retry_failed: bool, devices: list[str] | None,
                 pack_seeds: int = 1):
        self.jobs, self.retry_failed, self.pack_seeds = jobs, retry_failed, pack_seeds
        self.train_fn = _train_fn_path(train_fn)
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
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        return env

    def _spawn(self, job: dict, log: Path) -> int:
        """Run ``job`` in a worker process on a free slot (GPU); its exit code."""
        device = self.slots.get()
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "benchmark.runner"],
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
                if _needs_run(spec, results_dir, self.retry_failed, seen[spec.run_id]):
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
            lock = _acquire(results_dir, spec.run_id)
            if lock is None:
                return BUSY
            try:
                if _needs_run(spec, results_dir, self.retry_failed, seen):
                    write_failure_record(spec, results_dir, f"worker process exited with code "
                                         f"{code}; see logs/{spec.run_id}.log", started)
            finally:
                _release(lock, results_dir, spec.run_id)
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
        import torch

        n = torch.cuda.device_count()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


# --------------------------------------------------------------------------------------------
# The suite


@dataclass
class RunSummary:
    total: int
    executed: dict[str, str] = field(default_factory=dict)  # run_id -> status, run by this call
    table: Any = None  # suite_status() at the end (pandas DataFrame)
    jobs: list = field(default_factory=list)  # submitit jobs (executor="slurm")

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
    executor: str = "local",
    slurm: Any = None,
    pack_seeds: int = 1,
) -> RunSummary:
    """Run every run of ``specs`` that has no final record; see the module docstring.

    ``jobs``: runs at once (>1: one worker process per run, one GPU each when GPUs exist;
    0 means one per visible GPU). ``train_fn``: ``engine.train`` by default (or "module:function").
    ``wait_for_others``: at the end, wait for runs other processes hold, so the summary is final.
    ``executor="slurm"``: submit the runs needing it as a job array instead
    (``slurm``: :class:`benchmark.executors.SlurmOptions`) and return at once.
    ``pack_seeds``: train up to this many runs that differ only by seed as one packed program
    (refused with ConfigError for a cell whose finished runs were trained under another value).
    Raises ``stopping.Interrupted`` after SIGINT/SIGTERM (runs checkpointed, locks released) and
    ``stopping.DiskFull`` when a write fails for lack of space; ``benchmark.cli`` turns both into
    one line.
    """
    from tqdm.auto import tqdm

    if isinstance(pack_seeds, bool) or not isinstance(pack_seeds, int) or pack_seeds < 1:
        raise ConfigError(f"pack_seeds must be an integer >= 1, got {pack_seeds!r}")
    if pack_seeds > 1 and (executor != "local" or train_fn is not None):
        raise ConfigError("pack_seeds > 1 runs with the local executor and the default engine only"
                          f" (got executor={executor!r}, train_fn={'custom' if train_fn else 'default'})")
    if executor != "local":
        from benchmark.executors import EXECUTORS, submit_slurm

        if executor != "slurm":
            raise ConfigError(f"unknown executor '{executor}' (available: {', '.join(EXECUTORS)})")
        specs = list(specs)
        jobs_ = submit_slurm(specs, results_dir, retry_failed=retry_failed, train_fn=train_fn,
                             options=slurm)
        return RunSummary(total=len({s.run_id for s in specs}), jobs=jobs_,
                          table=suite_status(specs, results_dir))

    results_dir = prepare_results_dir(results_dir)
    specs = list({s.run_id: s for s in specs}.values())
    if jobs == 0:
        jobs = max(1, len(visible_cuda_devices() if devices is None else devices))
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1 (or 0 for one per GPU), got {jobs}")
    seen = {s.run_id: _signature(record_path(results_dir, s.run_id)) for s in specs}
    todo = []
    for s in specs:
        record = load_record(record_path(results_dir, s.run_id))
        if _wants_run(record, retry_failed):
            todo.append(s)
        elif record["status"] in FINAL:  # killed between writing the record and this cleanup
            checkpoint_path(results_dir, s.run_id).unlink(missing_ok=True)
    check_packing(specs, todo, results_dir, pack_seeds)
    clean_orphaned_pack_checkpoints(results_dir)
    dispatcher = (_InProcess(train_fn, retry_failed, progress, pack_seeds) if jobs == 1
                  else _Workers(jobs, train_fn, retry_failed, devices, pack_seeds))
    summary = RunSummary(total=len(specs))
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run",
               desc=(specs[0].suite or "runs") if specs else "runs", disable=not progress)

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
                    if not _needs_run(spec, results_dir, retry_failed, seen[spec.run_id]):
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


def pack_flag(record: dict) -> int:
    """The ``--pack-seeds`` a record was trained under (records before it was recorded: the
    width of their packed program, 1 when unpacked)."""
    runtime = record.get("runtime") or {}
    return int(runtime.get("pack_seeds") or runtime.get("packed_seeds") or 1)


def check_packing(specs: list[RunSpec], todo: list[RunSpec], results_dir: Path, pack_seeds: int) -> None:
    """Refuse, before anything runs, to add runs trained under ``--pack-seeds pack_seeds`` to a
    cell (runs differing only by seed) whose finished runs were trained under another value:
    packing changes float rounding (docs/sweeps.md), and a cell must not mix the two."""
    todo_ids = {s.run_id for s in todo}
    cells: dict[str, tuple[RunSpec, set[int], bool]] = {}
    for spec in specs:
        ident = spec.identity()
        ident.pop("seed")
        key = json.dumps(ident, sort_keys=True)
        first, flags, runs_now = cells.get(key, (spec, set(), False))
        record = load_record(record_path(results_dir, spec.run_id))
        if record is not None and record["status"] in FINAL:
            flags.add(pack_flag(record))
        cells[key] = (first, flags, runs_now or spec.run_id in todo_ids)
    for first, flags, runs_now in cells.values():
        other = sorted(flags - {pack_seeds})
        if runs_now and other:
            raise ConfigError(
                f"{first.display_label} on {first.dataset}/{first.model}: its finished runs were "
                f"trained with --pack-seeds {other[0]}, this call would add runs with --pack-seeds "
                f"{pack_seeds} (packing changes float rounding); rerun with --pack-seeds {other[0]}")


def clean_orphaned_pack_checkpoints(results_dir: Path) -> int:
    """Remove ``checkpoints/pack-*.pt`` whose runs all have a final record (nobody will resume
    them: a pack resumes only as the same group). Taken under every run's lock; a checkpoint
    that does not say its runs (older ones) is left alone. Returns how many were removed."""
    packs = sorted((results_dir / "checkpoints").glob("pack-*.pt"))
    if not packs:
        return 0
    from benchmark.training import checkpoint_run_ids  # torch: only when there is one to read

    removed = 0
    for path in packs:
        run_ids = checkpoint_run_ids(path)
        if not run_ids:
            continue
        locks = []
        try:
            for run_id in run_ids:
                lock = _acquire(results_dir, run_id)
                if lock is None:
                    break
                locks.append((lock, run_id))
            else:
                records = [load_record(record_path(results_dir, r)) for r in run_ids]
                if all(r is not None and r["status"] in FINAL for r in records):
                    path.unlink(missing_ok=True)
                    removed += 1
        finally:
            for lock, run_id in locks:
                _release(lock, results_dir, run_id)
    return removed


# --------------------------------------------------------------------------------------------
# Status


if __name__ == "__main__":
    sys.exit(_worker_main())
