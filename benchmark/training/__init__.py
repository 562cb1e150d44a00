"""Training: one run (or S seeds packed as one program) from a spec to its record.

Read top to bottom: ``checks.py`` refuses what cannot run (before anything is loaded),
``run.py`` builds a run's state from a spec, ``steps.py`` is the step (plain, compiled or a CUDA
graph from ``capture.py``), ``loop.py`` drives steps, evaluations and checkpoints and writes the
record, asking of the run only what ``driven.Driven`` declares; ``packed.py`` is the S-seed
counterpart of ``run.py`` and ``metrics.py`` what a run measures.
"""

from benchmark.training.loop import (
    checkpoint_run_ids,
    load_checkpoint,
    pack_id,
    train,
    train_packed,
)
from benchmark.training.distributed import (
    DistInfo,
    env_world_size,
    init_from_env as init_distributed,
)
from benchmark.training.metrics import (
    device_name,
    environment,
    evaluate,
    layer_energies,
    smoothed_cross_entropy,
    weight_decay_term,
)
from benchmark.training.checks import MAX_SEED, check_packable, check_runs, validate
from benchmark.training.driven import Driven
from benchmark.training.packed import PackedRun, setup_packed
from benchmark.training.run import (
    Run,
    build_model,
    resolve_device,
    resolve_threads,
    runtime_settings,
    setup,
)
from benchmark.training.steps import Steps

__all__ = ["DistInfo", "env_world_size", "init_distributed", "MAX_SEED", "PackedRun", "Run", "checkpoint_run_ids", "load_checkpoint", "resolve_threads", "Steps", "build_model", "check_packable", "check_runs", "Driven", "device_name", "environment", "evaluate",
           "layer_energies", "pack_id", "resolve_device", "runtime_settings", "setup",
           "setup_packed", "smoothed_cross_entropy", "train", "train_packed", "validate",
           "weight_decay_term"]
