"""Run records and the files of a results directory.

A results directory holds one JSON record per run (``runs/<run_id>.json``), the latest
checkpoint of unfinished runs (``checkpoints/<run_id>.pt``) and one lock file per run
(``locks/<run_id>.lock``). Every write goes to a temporary file in the same directory and is
moved into place with ``os.replace``, which is atomic on POSIX: a reader, or a runner restarted
after ``kill -9``, sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("complete", "diverged", "failed")
# A record missing any of these is not a valid record (treated as absent).
REQUIRED_FIELDS = (
    "schema_version", "run_id", "status", "reason", "config", "seed", "git", "versions",
    "device", "synthetic", "wall_time_s", "median_step_ms", "curves", "final",
)


def git_state() -> dict[str, Any]:
    """{"commit": the checkout's commit or "unknown", "dirty": modified code (None if unknown)}.

    "Dirty" is about the code: ``results/`` holds the committed outputs that runs rewrite.
    """
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], check=False, cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return {"commit": "unknown", "dirty": None}
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": bool(dirty)}


def record_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "runs" / f"{run_id}.json"


def checkpoint_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "checkpoints" / f"{run_id}.pt"


def lock_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "locks" / f"{run_id}.lock"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True).encode())


def load_record(path: str | Path) -> dict | None:
    """The record at ``path``, or None when it is missing, unreadable or incomplete."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED_FIELDS):
        return None
    if record["status"] not in STATUSES:
        return None
    return record


def iter_records(results_dir: str | Path):
    """Yield (path, record) for every valid record of a results directory."""
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        record = load_record(path)
        if record is not None:
            yield path, record
