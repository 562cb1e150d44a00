"""A sweep whose every run spans several processes (DDP): under ``torchrun`` or inside one
multi-task Slurm job (``slurm.RunTask`` with ``--nodes`` / ``--gpus-per-node`` > 1).

Every process of the job walks the same list of runs. For each, rank 0 takes the run's lock and
decides (``attempt.try_run``: skip a finished run, resume an interrupted one) and tells the other
ranks whether to train it; all ranks then train it together (``benchmark.training``, which
shards batches and writes files from rank 0 only). A run that fails on rank 0 is recorded as
failed and the job then stops with an error, so that torchrun / Slurm ends the other ranks
(which may wait in a collective); a run that fails on another rank ends that process the same
way (the run stays resumable from its last checkpoint).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

import torch.distributed as dist

from benchmark import stopping
from benchmark.config import ConfigError, RunSpec
from benchmark.records import record_path
from benchmark.sweep.attempt import try_run
from benchmark.sweep.claims import BUSY, SKIPPED, prepare_results_dir, signature
from benchmark.sweep.local import RunSummary
from benchmark.sweep.status import suite_status
from benchmark.training import env_world_size, init_distributed, train

TRAIN, SKIP = "train", "skip"


def launched() -> bool:
    """True when this process is one of several of a launcher (torchrun, Slurm tasks)."""
    return env_world_size() > 1


def _broadcast(message: str | None) -> str:
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _announce_and_train(announced: list, spec: RunSpec, results_dir: Path, progress: bool = False):
    """Rank 0's train_fn: tell the other ranks to train this run, then train it with them."""
    _broadcast(TRAIN)
    announced.append(True)
    return train(spec, results_dir, progress=progress)


def run_distributed(specs: Iterable[RunSpec], results_dir: str | Path, *,
                    retry_failed: bool = False, progress: bool = True) -> RunSummary:
    """Train every run of ``specs`` that needs it with all processes of this job (see the module
    docstring). Rank 0's summary counts the runs; the others return one with ``reporting``
    False (rank 0 reports)."""
    specs = list({s.run_id: s for s in specs}.values())
    if not specs:
        return RunSummary(total=0)
    info = init_distributed(specs[0].protocol.runtime.device)
    if info is None:
        raise ConfigError("run_distributed needs several processes (WORLD_SIZE > 1: torchrun, "
                          "or --executor slurm with --nodes/--gpus-per-node)")
    results_dir = prepare_results_dir(results_dir)
    summary = RunSummary(total=len(specs), reporting=info.rank == 0)
    with stopping.signals_request_stop():
        for spec in specs:
            if info.rank != 0:
                if _broadcast(None) == TRAIN:
                    train(spec, results_dir, progress=False)
                continue
            announced: list[bool] = []
            # wait=False: the other ranks wait in a broadcast, which has a time limit
            outcome = try_run(spec, results_dir, functools.partial(_announce_and_train, announced),
                              retry_failed=retry_failed,
                              seen=signature(record_path(results_dir, spec.run_id)),
                              progress=progress, wait=False)
            if not announced:
                _broadcast(SKIP)
            if outcome not in (BUSY, SKIPPED):
                summary.executed[spec.run_id] = outcome
            if announced and outcome == "failed":
                raise RuntimeError(f"run {spec.run_id} failed (see its record); stopping the job "
                                   "so that the other ranks end too")
    dist.barrier()
    if info.rank == 0:
        summary.table = suite_status(specs, results_dir)
    return summary
