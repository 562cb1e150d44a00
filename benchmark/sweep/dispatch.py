"""The one entry point of a sweep: ``execute(specs, results_dir, executor=...)`` picks where runs
execute, on this machine (``local``) or on a Slurm cluster as one job array (``slurm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from benchmark.config import ConfigError, RunSpec
from benchmark.sweep.claims import TrainFn
from benchmark.sweep.ddp import launched, run_distributed
from benchmark.sweep.local import RunSummary, run_suite
from benchmark.sweep.slurm import SlurmOptions, submit_slurm
from benchmark.sweep.status import suite_status

EXECUTORS = ("local", "slurm")


def execute(
    specs: Iterable[RunSpec],
    results_dir: str | Path,
    *,
    executor: str = "local",
    jobs: int = 1,
    retry_failed: bool = False,
    train_fn: TrainFn | str | None = None,
    progress: bool = True,
    slurm: SlurmOptions | None = None,
    pack_seeds: int = 1,
) -> RunSummary:
    """``local``: run now; the RunSummary is final when the suite is as done as it can be.
    Under torchrun (``WORLD_SIZE`` > 1) ``local`` trains each run with all the processes
    (``sweep.ddp``). ``slurm``: submit the runs that need it as one job array and return at once
    (``summary.jobs``; follow with ``python -m benchmark status --watch``)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}' (available: {', '.join(EXECUTORS)})")
    if executor == "local" and launched():  # under torchrun: every run over all its processes
        if jobs != 1 or pack_seeds != 1 or train_fn is not None:
            raise ConfigError("under torchrun (WORLD_SIZE > 1) each run uses every process: "
                              "give --jobs 1 and --pack-seeds 1")
        return run_distributed(specs, results_dir, retry_failed=retry_failed, progress=progress)
    if executor == "local":
        return run_suite(specs, results_dir, jobs=jobs, retry_failed=retry_failed,
                         train_fn=train_fn, progress=progress, pack_seeds=pack_seeds)
    if pack_seeds != 1:
        raise ConfigError(f"--pack-seeds {pack_seeds} runs with the local executor only")
    specs = list(specs)
    jobs_ = submit_slurm(specs, results_dir, retry_failed=retry_failed, train_fn=train_fn,
                         options=slurm)
    return RunSummary(total=len({s.run_id for s in specs}), jobs=jobs_,
                      table=suite_status(specs, results_dir))
