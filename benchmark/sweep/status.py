"""Where a suite stands: done / running / failed / pending per run, read from the results
directory alone (records and lock files), without creating any file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import filelock
import pandas as pd

from benchmark.config import ConfigError, RunSpec
from benchmark.progress import progress as progress_bar
from benchmark.records import checkpoint_path, iter_records, load_record, lock_path, record_path
from benchmark.sweep.slurm_jobs import jobs_path, slurm_view

FINAL = ("complete", "diverged")  # statuses a runner never reruns


def lock_is_held(results_dir: str | Path, run_id: str) -> bool:
    """True when another process holds the run's lock (without creating any file)."""
    path = lock_path(results_dir, run_id)
    if not path.exists():
        return False
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


STATES = ("done", "running", "failed", "pending")
STATUS_COLUMNS = ("run_id", "suite", "label", "dataset", "model", "regularizer", "seed", "state",
                  "status", "reason", "checkpoint", "finished_at", "stale", "slurm")


def suite_status(
    specs: Iterable[RunSpec],
    results_dir: str | Path,
    *,
    watch: bool = False,
    interval_s: float = 5.0,
    progress: bool = True,
    file: Any = None,
):
    """One row per run: ``state`` is done (status complete or diverged), running (its lock is
    held by a process), failed (``reason`` says why) or pending. Creates no file.

    ``watch=True`` polls every ``interval_s`` with a progress bar until no run is running or
    pending (or nothing has been running for two polls), then returns the last table.
    """
    specs = list({s.run_id: s for s in specs}.values())
    root = Path(results_dir)
    if root.exists() and (not root.is_dir() or not os.access(root, os.R_OK | os.X_OK)):
        raise ConfigError(f"results directory '{root}' is not a readable directory")
    table = _status_table(specs, root)
    if not watch:
        return table
    idle = 0
    with progress_bar(len(specs), (specs[0].suite or "runs") if specs else "runs", unit="run",
                      enabled=progress, file=file) as bar:
        while True:
            c = count_states(table)
            bar.update(c["done"] + c["failed"] - bar.n)
            bar.set_postfix(running=c["running"], failed=c["failed"], pending=c["pending"])
            idle = idle + 1 if c["running"] == 0 else 0
            if c["running"] + c["pending"] == 0 or idle >= 2:
                return table
            time.sleep(interval_s)
            table = _status_table(specs, root)


def _key(identity: dict, *drop: str) -> str:
    return json.dumps({k: v for k, v in identity.items() if k not in drop}, sort_keys=True)


def _stale_records(specs: list[RunSpec], root: Path) -> dict[str, str]:
    """{run id of a spec: run id of a record of the same run made from another version of its
    plugin's source}. Same run: equal identity but for the source hash, or, when none is
    equal, but for the source hash and hyper-parameters (an edit may change the defaults).
    Records are read only when some spec uses a plugin (its identity has a source hash)."""
    exact, loose, source = {}, {}, {}
    for spec in specs:
        ident = spec.identity()
        if "regularizer_source" in ident:
            exact[_key(ident, "regularizer_source")] = spec.run_id
            loose.setdefault(_key(ident, "regularizer_source", "regularizer_hparams"), spec.run_id)
            source[spec.run_id] = ident["regularizer_source"]
    if not exact:
        return {}
    stale: dict[str, str] = {}
    for _, record in iter_records(root):
        config = record.get("config")
        if not isinstance(config, dict) or "regularizer_source" not in config:
            continue
        spec_id = exact.get(_key(config, "regularizer_source")) or \
            loose.get(_key(config, "regularizer_source", "regularizer_hparams"))
        if spec_id is not None and config["regularizer_source"] != source[spec_id]:
            stale.setdefault(spec_id, record["run_id"])
    return stale


def _status_table(specs: list[RunSpec], root: Path):
    # Slurm's own view (PENDING, RUNNING, ...) of runs submitted with --executor slurm
    slurm = slurm_view(root) if jobs_path(root).exists() else {}
    rows = []
    stale = _stale_records(specs, root)
    for spec in specs:
        record = load_record(record_path(root, spec.run_id))
        status = record["status"] if record else None
        # a Slurm task is running from its start, before its Python has taken the run's lock
        if lock_is_held(root, spec.run_id) or (slurm.get(spec.run_id) == "RUNNING"
                                               and status not in FINAL):
            state = "running"
        elif status in FINAL:
            state = "done"
        else:
            state = "failed" if status == "failed" else "pending"
        rows.append({
            "run_id": spec.run_id, "suite": spec.suite, "label": spec.display_label,
            "dataset": spec.dataset, "model": spec.model, "regularizer": spec.regularizer,
            "seed": spec.seed, "state": state, "status": status,
            "reason": record.get("reason") if record else None,
            "checkpoint": checkpoint_path(root, spec.run_id).exists(),
            "finished_at": record.get("finished_at") if record else None,
            "stale": stale.get(spec.run_id),
            "slurm": slurm.get(spec.run_id),
        })
    return pd.DataFrame(rows, columns=list(STATUS_COLUMNS))


def count_states(table) -> dict[str, int]:
    counts = {s: 0 for s in STATES}
    if table is not None:
        for state, n in table["state"].value_counts().items():
            counts[state] = int(n)
    return counts


def format_status(table, *, max_rows: int = 20) -> str:
    """Human summary: a counts line, then failed runs (with reasons) and running runs."""
    c = count_states(table)
    name = table["suite"].iloc[0] if len(table) else "suite"
    lines = [f"{name}: {len(table)} runs - {c['done']} done, {c['running']} running, "
             f"{c['failed']} failed, {c['pending']} pending"]
    slurm = table["slurm"].dropna() if "slurm" in table else []
    if len(slurm):
        counts = slurm.value_counts()
        lines.append("slurm: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    for state in ("failed", "running"):
        rows = table[table["state"] == state]
        if len(rows):
            lines.append(f"{state}:")
        for row in rows.head(max_rows).itertuples():
            why = f": {row.reason}" if state == "failed" and row.reason else ""
            where = f" [slurm {row.slurm}]" if isinstance(row.slurm, str) else ""
            lines.append(f"  {row.run_id}  {row.dataset} {row.model} {row.label} seed {row.seed}"
                         f"{where}{why}")
        if len(rows) > max_rows:
            lines.append(f"  ... and {len(rows) - max_rows} more")
    stale = table[table["stale"].notna()] if "stale" in table else table.iloc[:0]
    if len(stale):
        lines.append(f"stale: {len(stale)} record(s) come from an older version of a plugin's "
                     f"source; their runs are counted as not done and will rerun:")
        for row in stale.head(max_rows).itertuples():
            lines.append(f"  {row.stale} -> {row.run_id}  {row.dataset} {row.model} {row.label} "
                         f"seed {row.seed}")
    return "\n".join(lines)
