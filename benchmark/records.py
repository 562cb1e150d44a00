"""Run records and the files of a results directory.

A results directory holds one JSON record per run (``<run_id>.json``, at its top level), the latest
checkpoint of unfinished runs (``checkpoints/<run_id>.pt``) and one lock file per run
(``locks/<run_id>.lock``). Every write goes to a temporary file in the same directory and is
moved into place with ``os.replace``, which is atomic on POSIX: a reader, or a runner restarted
after ``kill -9``, sees either the old file or the new one, never half of one. Files get the
permissions the process umask gives a new file (``mkstemp`` alone would make them 0600), so a
results directory shared by a group is readable by the group.

Records are strict JSON: a non-finite number (a diverged run's NaN loss) is written as ``null``
and its place listed in the record's ``non_finite`` field ({"final.train_loss": "nan"}, ...);
``load_record`` puts the values back, and also reads older records holding bare ``NaN``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

# The record format's version, and a reader per version (load_record):
#   1  (to 2026-12-04) REQUIRED_FIELDS; "machine", "runtime" and "distributed" came later and
#      may be absent. Read by filling them with None.
#   2  every field of 1 plus "machine" (benchmark.machine.facts), "runtime" (how the step ran)
#      and "distributed" (processes), each present, None where the writer did not know it (a
#      failure record written by the runner).
# A change a reader must know about moves the number and adds a reader; run identity does not
# depend on it (config.py, "Run identity across versions").
SCHEMA_VERSION = 2
STATUSES = ("complete", "diverged", "failed")
# A record missing any of these is not a valid record (treated as absent).
REQUIRED_FIELDS = (
    "schema_version", "run_id", "status", "reason", "config", "seed", "git", "versions",
    "device", "synthetic", "wall_time_s", "median_step_ms", "curves", "final",
)
# Present in every record from version 2 on (None when unknown).
FIELDS_SINCE_2 = ("machine", "runtime", "distributed")


class NewerRecord(ValueError):
    """A record written by a later format than this code reads: refuse rather than overwrite."""


def _read_v1(record: dict) -> dict:
    for key in FIELDS_SINCE_2:
        record.setdefault(key, None)
    return record


def _read_v2(record: dict) -> dict:
    return record if all(k in record for k in FIELDS_SINCE_2) else None


READERS = {1: _read_v1, 2: _read_v2}  # version -> the record as the code of today reads it


def read_version(record: dict, where: Any = "record") -> dict | None:
    """``record`` as today's format, by its version's reader (in place); None for an unknown
    version or a record its version's reader rejects. NewerRecord for a later format."""
    version = record.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise NewerRecord(f"{where}: record format {version}, this CoMHE-Bench reads up to "
                          f"{SCHEMA_VERSION}; update the code (git pull) before reading it")
    reader = READERS.get(version) if isinstance(version, int) else None
    return reader(record) if reader else None


def git_state(root: str | Path | None = None) -> dict[str, Any]:
    """{"commit": the checkout's commit or "unknown", "dirty": modified code (None if unknown)}.

    "Dirty" is about the code and configs: ``results/`` holds the committed outputs that runs
    rewrite, and an edited document (``docs/``, ``*.md``) changes no number, so neither counts
    (a sweep whose docs were edited mid-way is not split into two code versions).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], check=False, cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return {"commit": "unknown", "dirty": None}
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results",
                ":(exclude)docs", ":(exclude)*.md")
    return {"commit": commit, "dirty": bool(dirty)}


def make_record(spec: Any, *, status: str, reason: str | None, **fields: Any) -> dict[str, Any]:
    """THE record of one run, success or failure, built in one place: the run's identity
    (``run_id, suite, label, config, seed``) from its spec, the outcome, then ``fields`` (what
    the engine or the runner knows: environment, curves, final metrics, ...). A record missing
    a field of :data:`REQUIRED_FIELDS` is a bug of its writer: ValueError, nothing written."""
    if status not in STATUSES:
        raise ValueError(f"record status must be one of {', '.join(STATUSES)}, got {status!r}")
    record = {"schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "suite": spec.suite,
              "label": spec.display_label, "config": spec.identity(), "seed": spec.seed,
              **{k: None for k in FIELDS_SINCE_2}, **fields, "status": status, "reason": reason}
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise ValueError(f"record of {spec.run_id} lacks {', '.join(missing)}")
    return record


def record_path(results_dir: str | Path, run_id: str) -> Path:
    """``DIR/<run_id>.json``: a results directory holds its records at the top level."""
    return Path(results_dir) / f"{run_id}.json"


def record_files(results_dir: str | Path) -> list[Path]:
    """Every record file of a results directory, sorted: ``DIR/*.json``, and ``DIR/runs/*.json``
    of the layout before records moved up (read, never written)."""
    root = Path(results_dir)
    return sorted([*root.glob("*.json"), *(root / "runs").glob("*.json")])


def checkpoint_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "checkpoints" / f"{run_id}.pt"


def lock_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "locks" / f"{run_id}.lock"


_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (0666 & ~umask)."""
    with _umask_lock:  # os.umask can only be read by setting it: keep other threads out
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` through a temporary file in the same directory
    and ``os.replace``: a reader, or a process killed mid-write, sees the old file or the new
    one, never half of one. The file honours the umask; a full disk names the file."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0600 whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and not exc.filename:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the file
        raise
    return path


def _strip_non_finite(obj: Any, where: str, found: dict[str, str]) -> Any:
    """``obj`` with every non-finite float replaced by None; ``found``: dotted place -> "nan"/"inf"/"-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found[where] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, dict):
        return {k: _strip_non_finite(v, f"{where}.{k}" if where else str(k), found)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strip_non_finite(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


_PLACE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _restore_non_finite(record: dict) -> None:
    """Put back the values ``write_json_atomic`` wrote as null (see ``non_finite``)."""
    for place, value in (record.get("non_finite") or {}).items():
        keys = [int(i) if i else k for k, i in _PLACE.findall(place)]
        node: Any = record
        try:
            for key in keys[:-1]:
                node = node[key]
            if node[keys[-1]] is None:
                node[keys[-1]] = float(value)
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # a hand-edited record: leave it as it is


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Strict JSON (no NaN/Infinity tokens): non-finite numbers become null, listed in
    ``obj["non_finite"]`` when ``obj`` is a mapping."""
    found: dict[str, str] = {}
    clean = _strip_non_finite(obj, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = {**(clean.get("non_finite") or {}), **found}
    atomic_write(path, json.dumps(clean, indent=1, sort_keys=True, allow_nan=False).encode())


class LostClaim(Exception):
    """The run's lock file was deleted or replaced while this process held its lock: another
    process may now hold a lock on the new file, so this one must not write the record."""


# lock file path -> inode of the lock file this process holds (registered by the runner)
_claims: dict[str, int] = {}


def hold_claim(results_dir: str | Path, run_id: str) -> None:
    """Remember which lock file this process's lock is on (call right after acquiring it)."""
    path = lock_path(results_dir, run_id)
    _claims[str(path)] = path.stat().st_ino


def drop_claim(results_dir: str | Path, run_id: str) -> None:
    _claims.pop(str(lock_path(results_dir, run_id)), None)


def check_claim(results_dir: str | Path, run_id: str) -> None:
    """Raise LostClaim if this process holds the run's lock on a file that is no longer the one
    at ``locks/<run_id>.lock`` (deleted, or replaced by another process's new lock file). A run
    trained without the runner (no claim registered) is not checked."""
    path = lock_path(results_dir, run_id)
    held = _claims.get(str(path))
    if held is None:
        return
    try:
        current = path.stat().st_ino
    except FileNotFoundError:
        current = None
    if current != held:
        raise LostClaim(f"lock file '{path}' was removed or replaced while this run held it; "
                        "its record is left to the process holding the new lock")


def load_record(path: str | Path) -> dict | None:
    """The record at ``path`` read by its version's reader (READERS: every field of today's
    format present), or None when it is missing, unreadable or incomplete. NewerRecord (one
    line) for a record of a later format: a sweep must not take it for absent and overwrite it."""
    try:
        record = json.loads(Path(path).read_text())  # also reads bare NaN of older records
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED_FIELDS):
        return None
    if read_version(record, path) is None:
        return None
    _restore_non_finite(record)
    if record["status"] not in STATUSES:
        return None
    return record


def iter_records(results_dir: str | Path):
    """Yield (path, record) for every valid record of a results directory."""
    for path in record_files(results_dir):
        record = load_record(path)
        if record is not None:
            yield path, record
