"""Running one run (or one packed group of seeds) under its lock: the same path for the
runner's own process, worker processes and Slurm tasks.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import filelock

from benchmark import stopping
from benchmark.config import ConfigError, RunSpec
from benchmark.records import (
    LostClaim,
    load_record,
    record_path,
)
from benchmark.stopping import DiskFull
from benchmark.sweep.claims import (
    BUSY,
    SKIPPED,
    TrainFn,
    acquire,
    clean_run_temporaries,
    needs_run,
    reason_of,
    release,
    signature,
    write_failure_record,
)
from benchmark.sweep.status import FINAL
from benchmark.training import pack_id, train_packed


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


def train_fn_path(train_fn: TrainFn | str | None) -> str:
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
    while (lock := acquire(results_dir, spec.run_id)) is None:
        if not wait:
            return BUSY
        stopping.raise_if_requested()
        time.sleep(poll_s)
    try:
        if not needs_run(spec, results_dir, retry_failed, seen):
            return SKIPPED
        clean_run_temporaries(results_dir, spec.run_id)
        path = record_path(results_dir, spec.run_id)
        before = signature(path)
        started = time.time()
        try:
            resolve_train_fn(train_fn)(spec, results_dir, progress=progress)
        except LostClaim:
            return BUSY
        except Exception as exc:  # the engine does not record exceptions: the runner does
            record_exception(exc, [spec], results_dir, {spec.run_id: before}, started, "runner")
        record = load_record(path)
        return record["status"] if record else "failed"
    finally:
        release(lock, results_dir, spec.run_id)


def record_exception(exc: Exception, specs: list[RunSpec], results_dir: Path,
                      before: dict[str, Any], started: float, who: str) -> None:
    """A ``failed`` record for each run the exception left without a new record; a full disk
    raises DiskFull instead (writing more records would fail too, and the runs are not at fault)."""
    if stopping.is_disk_full(exc):
        raise DiskFull(f"disk full writing '{getattr(exc, 'filename', None) or results_dir}'") from exc
    cause = "input" if isinstance(exc, ConfigError) else None
    for spec in specs:
        if signature(record_path(results_dir, spec.run_id)) == before[spec.run_id]:
            try:
                write_failure_record(spec, results_dir, f"{who}: {reason_of(exc)}", started, cause)
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
    outcomes: dict[str, str] = {}
    held: dict[str, filelock.FileLock] = {}
    try:
        for spec in specs:
            lock = acquire(results_dir, spec.run_id)
            if lock is None:
                outcomes[spec.run_id] = BUSY
                continue
            held[spec.run_id] = lock
            if not needs_run(spec, results_dir, retry_failed, seen.get(spec.run_id)):
                outcomes[spec.run_id] = SKIPPED
        todo = [s for s in specs if s.run_id not in outcomes]
        if not todo:
            return outcomes
        for spec in todo:
            clean_run_temporaries(results_dir, spec.run_id)
        clean_run_temporaries(results_dir, pack_id(todo))
        before = {s.run_id: signature(record_path(results_dir, s.run_id)) for s in todo}
        started = time.time()
        try:
            train_packed(todo, results_dir, progress=progress, pack_seeds=pack_seeds)
        except LostClaim:
            pass  # the runs without a new record are read back below as BUSY
        except Exception as exc:  # the engine does not record exceptions: the runner does
            record_exception(exc, todo, results_dir, before, started, "runner (packed)")
        for spec in todo:
            path = record_path(results_dir, spec.run_id)
            record = load_record(path)
            if signature(path) == before[spec.run_id]:
                # no new record: the claim was lost (LostClaim), the holder of the new lock has it
                outcomes[spec.run_id] = (record["status"] if record and record["status"] in FINAL
                                         else BUSY)
            else:
                outcomes[spec.run_id] = record["status"] if record else "failed"
        return outcomes
    finally:
        for run_id, lock in held.items():
            release(lock, results_dir, run_id)


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
