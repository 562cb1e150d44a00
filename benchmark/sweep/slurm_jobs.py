"""What Slurm knows about a results directory's runs: submitted job ids, their states, and the
records of tasks that ended without writing one.

A task that Slurm cancels, kills at its time limit after the last requeue, or loses with its
node never reaches the engine's failure path, so nothing on disk would say what happened.
``submit_slurm`` notes each run's job id in ``<results>/slurm/jobs.json``; :func:`reconcile`
(called by ``run --executor slurm`` before it submits and by ``status``) asks Slurm about every
noted job of runs without a final record and writes a ``failed`` record with Slurm's state as
the reason for those that ended. Accounting (``sacct``) must be enabled for finished jobs;
``squeue`` answers for active ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

from benchmark.records import load_record, record_path, write_json_atomic

# Slurm job states (squeue/sacct): still going, or over without a record of ours.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
          "COMPLETING", "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"}
ENDED_BADLY = {"CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}


def jobs_path(results_dir: str | Path) -> Path:
    return Path(results_dir) / "slurm" / "jobs.json"


def load_jobs(results_dir: str | Path) -> dict[str, str]:
    """run id -> Slurm job id (``<array>_<task>``) of its latest submission."""
    try:
        data = json.loads(jobs_path(results_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def note_jobs(results_dir: str | Path, run_ids: Iterable[str], job_ids: Iterable[str]) -> None:
    """Remember which job runs which run (merged with earlier submissions, atomically)."""
    jobs = load_jobs(results_dir)
    jobs.update({r: str(j) for r, j in zip(run_ids, job_ids)})
    write_json_atomic(jobs_path(results_dir), jobs)


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Job id -> Slurm state (first word: "CANCELLED by 0" -> "CANCELLED"); ids Slurm does not
    know (yet) are absent. squeue answers for active jobs, sacct for finished ones."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    states: dict[str, str] = {}
    for line in _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)]).splitlines():
        job, _, state = line.partition("|")
        if job in ids and state:
            states[job] = state.split()[0]
    # squeue expands pending arrays (-r) and is current where sacct lags by a few seconds
    for line in _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)]).splitlines():
        job, _, state = line.partition("|")
        if job in ids and state:
            states[job] = state.split()[0]
    return states


def slurm_view(results_dir: str | Path) -> dict[str, str]:
    """run id -> the Slurm state of its latest job, for runs Slurm still knows about."""
    jobs = load_jobs(results_dir)
    states = job_states(jobs.values())
    return {run: states[job] for run, job in jobs.items() if job in states}


def reconcile(specs: Iterable[Any], results_dir: str | Path,
              write_failure: Any) -> dict[str, str]:
    """Write a ``failed`` record for every run of ``specs`` whose latest Slurm job ended badly
    without a final record of its own. ``write_failure(spec, reason)`` writes it (the runner's
    failure record). Returns run id -> the Slurm state that was recorded."""
    jobs = load_jobs(results_dir)
    pending = {s.run_id: s for s in specs if s.run_id in jobs}
    pending = {r: s for r, s in pending.items()
               if (load_record(record_path(results_dir, r)) or {}).get("status") in (None, "failed")}
    states = job_states(jobs[r] for r in pending)
    written = {}
    for run_id, spec in pending.items():
        state = states.get(jobs[run_id])
        record = load_record(record_path(results_dir, run_id))
        if state in ENDED_BADLY and record is None:
            write_failure(spec, f"slurm: job {jobs[run_id]} ended {state} without a record "
                                f"(logs: slurm/{jobs[run_id]}/)")
            written[run_id] = state
    return written
