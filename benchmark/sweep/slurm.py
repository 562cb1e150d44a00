"""Where runs execute: this machine (``local``) or a Slurm cluster through submitit (``slurm``).

``local`` is :func:`benchmark.sweep.local.run_suite` (in this process, or one worker process per
run, one per GPU); ``slurm`` (here) submits one job array whose tasks each run one run: the task takes the
run's file lock (waiting if another process holds it), resumes from the engine's checkpoint and
writes the record, exactly like the local runner. Each task is a
:class:`submitit.helpers.Checkpointable`: on preemption or time-out submitit calls
``checkpoint()``, which requeues the same task; the requeued task resumes from the engine's
latest ``checkpoints/<run_id>.pt`` (work since that checkpoint is redone).

Multi-GPU / multi-node runs (``gpus_per_node`` > 1 or ``nodes`` > 1): each run is one job of
``nodes`` x ``gpus_per_node`` tasks (one per GPU); every task exports submitit's
``TorchDistributedEnvironment`` (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) and the tasks
train the run together with DDP (``sweep.ddp``: rank 0 takes the lock and writes the files).
The results directory must be on a file system every node sees.

The same code path runs under submitit's ``local`` and ``debug`` executors (``cluster=...``),
which is how it is tested without a cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment

from benchmark.config import ConfigError, RunSpec
from benchmark.records import load_record, record_path
from benchmark.sweep.attempt import try_run
from benchmark.sweep.ddp import run_distributed
from benchmark.sweep.claims import (
    SKIPPED,
    TrainFn,
    prepare_results_dir,
    signature,
    wants_run,
    write_failure_record,
)
from benchmark.sweep.slurm_jobs import note_jobs, reconcile
from benchmark.training.distributed import check as check_distributed


@dataclass
class SlurmOptions:
    """Job settings (submitit names). ``additional`` goes to ``slurm_additional_parameters``."""

    partition: str | None = None
    timeout_min: int = 4 * 60
    gpus_per_node: int = 1
    nodes: int = 1  # > 1, or gpus_per_node > 1: one task per GPU, each run over all (DDP)
    cpus_per_task: int = 8
    mem_gb: float | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before the task (module load ...)
    additional: dict[str, Any] = field(default_factory=dict)
    # USR2 this long before the time limit: the task checkpoints and is requeued, at most
    # max_num_timeout times (then it ends TIMEOUT and `reconcile` records it as failed)
    signal_delay_s: int = 90
    max_num_timeout: int = 3
    folder: str | Path | None = None  # submitit logs; default <results>/slurm/%j
    cluster: str = "slurm"            # "local" / "debug": same code path without a cluster

    @property
    def distributed(self) -> bool:
        """Whether each run spans several tasks (DDP): more than one GPU or node per job."""
        return self.nodes > 1 or self.gpus_per_node > 1

    @property
    def world_size(self) -> int:
        """Tasks (processes) per run: one per GPU (one per node without GPUs)."""
        return self.nodes * max(1, self.gpus_per_node) if self.distributed else 1

    def check(self) -> None:
        """One-line ConfigError for settings Slurm or the engine cannot use."""
        if self.nodes < 1 or self.gpus_per_node < 0:
            raise ConfigError(f"--nodes must be >= 1 and --gpus-per-node >= 0, got "
                              f"{self.nodes} and {self.gpus_per_node}")

    def parameters(self) -> dict[str, Any]:
        tasks = max(1, self.gpus_per_node) if self.distributed else 1
        p: dict[str, Any] = {
            "name": "comhe-bench", "timeout_min": int(self.timeout_min),
            "gpus_per_node": int(self.gpus_per_node), "cpus_per_task": int(self.cpus_per_task),
            "tasks_per_node": tasks, "nodes": int(self.nodes),
            "slurm_array_parallelism": int(self.array_parallelism),
            "slurm_signal_delay_s": int(self.signal_delay_s),
        }
        if self.mem_gb is not None:
            p["mem_gb"] = float(self.mem_gb)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                p[f"slurm_{key}"] = getattr(self, key)
        if self.setup:
            p["slurm_setup"] = list(self.setup)
        if self.additional:
            p["slurm_additional_parameters"] = dict(self.additional)
        if self.cluster != "slurm":  # the local executors know only the generic parameters
            p = {k: v for k, v in p.items() if not k.startswith("slurm_")}
        return p


class RunTask(Checkpointable):
    """One run as a Slurm task: lock, resume, record. Requeued (same object) on preemption."""

    def __init__(self, results_dir: str | Path, train_fn: TrainFn | str | None = None,
                 retry_failed: bool = False, distributed: bool = False):
        self.results_dir = str(results_dir)
        self.train_fn = train_fn
        self.retry_failed = retry_failed
        self.distributed = distributed  # one of the job's tasks: the run over all of them (DDP)

    def __call__(self, spec: RunSpec, seen: Any = None) -> dict[str, Any]:
        if self.distributed:
            TorchDistributedEnvironment().export(overwrite=True)
            summary = run_distributed([spec], Path(self.results_dir),
                                      retry_failed=self.retry_failed, progress=False)
            record = load_record(record_path(self.results_dir, spec.run_id)) or {}
            return {"run_id": spec.run_id, "status": record.get("status"),
                    "reason": record.get("reason"), "ran_here": spec.run_id in summary.executed}
        outcome = try_run(spec, Path(self.results_dir), self.train_fn,
                          retry_failed=self.retry_failed, seen=seen, progress=False, wait=True,
                          poll_s=10.0)
        record = load_record(record_path(self.results_dir, spec.run_id)) or {}
        return {"run_id": spec.run_id, "status": record.get("status"),
                "reason": record.get("reason"), "ran_here": outcome != SKIPPED}

    def checkpoint(self, spec: RunSpec, seen: Any = None):
        # The engine keeps its own checkpoint on disk; requeueing the same call resumes from it.
        return DelayedSubmission(self, spec, seen)


def submit_slurm(
    specs: Iterable[RunSpec],
    results_dir: str | Path,
    *,
    retry_failed: bool = False,
    train_fn: TrainFn | str | None = None,
    options: SlurmOptions | None = None,
) -> list[Any]:
    """Submit the runs that still need running as one job array; returns the submitit jobs
    (``job.job_id``, ``job.result()``). Runs with a final record are not submitted."""
    options = options or SlurmOptions()
    options.check()
    specs = list(specs)
    if options.distributed:
        if train_fn is not None:
            raise ConfigError("a custom train_fn runs one process per run; give --nodes 1 and "
                              "--gpus-per-node 1 (or 0)")
        for spec in specs:  # every rank's batch slice must be whole
            check_distributed(spec.protocol, options.world_size)
    root = Path(results_dir).resolve()
    folder = Path(options.folder) if options.folder else root / "slurm" / "%j"
    # Before anything is created: no cluster here is a one-line error and an untouched disk.
    try:
        extra = ({"slurm_max_num_timeout": int(options.max_num_timeout)}
                 if options.cluster == "slurm" else {})
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster, **extra)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"executor '{options.cluster}' is not available here: {exc}") from None
    results_dir = prepare_results_dir(root)
    specs = list({s.run_id: s for s in specs}.values())
    # Tasks Slurm ended without a record (cancelled, out of requeues, node lost) get one first.
    reconcile(specs, results_dir, lambda spec, reason: write_failure_record(
        spec, results_dir, reason, time.time()))
    todo = [s for s in specs
            if wants_run(load_record(record_path(results_dir, s.run_id)), retry_failed)]
    if not todo:
        return []
    executor.update_parameters(**options.parameters())
    task = RunTask(results_dir, train_fn, retry_failed, distributed=options.distributed)
    seen = [signature(record_path(results_dir, s.run_id)) for s in todo]
    jobs = executor.map_array(task, todo, seen)
    note_jobs(results_dir, [s.run_id for s in todo], [j.job_id for j in jobs])
    return jobs

