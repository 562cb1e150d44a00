"""Who runs what, read from a results directory: a run's record, its lock, its temporary files.

1. a valid ``complete`` or ``diverged`` record is final: skip it; a ``failed`` one is rerun only
   with ``retry_failed`` (or when its cause was the input: fixing it and rerunning just works);
2. the run's file lock (``locks/<run_id>.lock``) is taken without waiting; another holder means
   "come back later";
3. holding the lock, look again (another runner may have just finished it), remove temp files
   a killed writer left for this run, and only then train.

Records and checkpoints are only ever replaced with ``os.replace``, so ``kill -9`` at any moment
leaves the old file or the new one, never half of one; the OS drops a dead process's lock.
Lock files may remain after a run (empty and harmless).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable

import filelock

from benchmark.config import ConfigError, RunSpec
from benchmark.records import (
    drop_claim,
    git_state,
    hold_claim,
    load_record,
    lock_path,
    make_record,
    record_path,
    write_json_atomic,
)
from benchmark.sweep.status import FINAL
from benchmark.training import checkpoint_run_ids  # torch: only when there is one to read

BUSY = "busy"        # another process holds the run's lock


SKIPPED = "skipped"  # nothing to do after all (finished by someone else meanwhile)


TrainFn = Callable[..., Any]


def prepare_results_dir(results_dir: str | Path) -> Path:
    """Create the directory (records go at its top level) with ``checkpoints/``, ``locks/``,
    ``logs/``; one-line ConfigError if unusable."""
    root = Path(results_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"results directory '{root}' is not a directory")
    for sub in ("", "checkpoints", "locks", "logs"):
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


def signature(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file now at ``path`` (a new record is a new inode: os.replace)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def caused_by_input(record: dict) -> bool:
    # Records written before ``cause`` existed say it in their reason.
    return record.get("cause") == "input" or str(record.get("reason") or "").startswith(
        ("runner: ConfigError:", "runner (packed): ConfigError:"))


def retryable(record: dict, retry_failed: bool) -> bool:
    """A failed record is rerun with ``retry_failed``, or always when the input caused it (the
    user fixed it; if not, it fails again in set-up, before any training)."""
    return record["status"] == "failed" and (retry_failed or caused_by_input(record))


def wants_run(record: dict | None, retry_failed: bool) -> bool:
    if record is None:
        return True
    return retryable(record, retry_failed)


def needs_run(spec: RunSpec, results_dir: Path, retry_failed: bool, seen: Any) -> bool:
    """Does the run still need running? A failed record is retried only if it is the one we saw
    when the suite started (a newer one was written by another runner retrying it)."""
    path = record_path(results_dir, spec.run_id)
    record = load_record(path)
    if record is None:
        return True
    if record["status"] in FINAL:
        return False
    return retryable(record, retry_failed) and signature(path) == seen


def clean_run_temporaries(results_dir: Path, run_id: str) -> int:
    """Temp files of this run only (other runs' writers may be alive): call with the lock held."""
    n = 0
    for pattern in (f".{run_id}.json.*.tmp", f"checkpoints/.{run_id}.pt.*.tmp"):
        for tmp in results_dir.glob(pattern):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def run_lock(results_dir: Path, run_id: str) -> filelock.FileLock:
    path = lock_path(results_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path), timeout=0)  # default mode: the umask decides


def acquire(results_dir: Path, run_id: str) -> filelock.FileLock | None:
    """The run's lock, taken without waiting, and registered as this process's claim (checked
    again before the record is written: ``records.check_claim``); None if held elsewhere."""
    lock = run_lock(results_dir, run_id)
    try:
        lock.acquire()
    except filelock.Timeout:
        return None
    try:
        hold_claim(results_dir, run_id)
    except FileNotFoundError:  # deleted between its creation and our flock: take it anew
        lock.release()
        return acquire(results_dir, run_id)
    return lock


def release(lock: filelock.FileLock, results_dir: Path, run_id: str) -> None:
    drop_claim(results_dir, run_id)
    lock.release()


def reason_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def write_failure_record(spec: RunSpec, results_dir: Path, reason: str, started: float,
                         cause: str | None = None) -> None:
    """A valid ``failed`` record for a run whose engine could not write one (crash, bug).
    ``cause="input"``: a bad input met during set-up (rerun without --retry-failed)."""
    now = time.time()
    iso = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat()  # noqa: E731
    write_json_atomic(record_path(results_dir, spec.run_id), make_record(
        spec, status="failed", reason=reason, git=git_state(),
        versions={"python": platform.python_version()}, device=None,
        synthetic=spec.dataset.startswith("synthetic"), notes=["record written by the runner"],
        started_at=iso(started), finished_at=iso(now), wall_time_s=now - started,
        median_step_ms=None, curves={}, final={}, cause=cause))


def pack_flag(record: dict) -> int:
    """The ``--pack-seeds`` a record was trained under (records before it was recorded: the
    width of their packed program, 1 when unpacked)."""
    runtime = record["runtime"] or {}
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
    removed = 0
    for path in packs:
        run_ids = checkpoint_run_ids(path)
        if not run_ids:
            continue
        locks = []
        try:
            for run_id in run_ids:
                lock = acquire(results_dir, run_id)
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
                release(lock, results_dir, run_id)
    return removed
