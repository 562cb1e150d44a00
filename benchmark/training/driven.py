"""What the training loop may ask of a run: the ``Driven`` protocol.

Two classes implement it, and say so by inheriting it: ``run.Run`` (one seed, one process or a
DDP rank) and ``packed.PackedRun`` (S seeds as one program). Every list has one entry per seed
(one for ``Run``). ``loop.py`` calls nothing else on a run, so a third kind of run (another
parallelism, another step) is a class that implements this and nothing in the loop changes.

The step itself (``step``, ``autocast``) comes from ``steps.Steps``, which both classes share;
it is declared here too because the loop calls it.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

import torch

from benchmark.data.datasets import Dataset
from benchmark.training.distributed import DistInfo


class Driven(Protocol):
    """A run the loop can drive: set up, stepped, evaluated, checkpointed and described."""

    # --- what the record says about how it ran
    device: torch.device
    data: Dataset              # the test (or validation) labels, the synthetic flag
    regs: list[Any]            # one regularizers.Regularizer per seed: hparams, epoch_schedule
    compile_mode: str
    bf16: bool
    dtype: torch.dtype
    memory_format: torch.memory_format
    # The distribution this process is part of; None for one process (packed runs always).
    dist_info: DistInfo | None

    # --- what the last step and the last evaluation left for the loop to record
    last_aux: dict[str, torch.Tensor]  # {name: the model's auxiliary loss} ((S,) or 0-dim)
    last_correct: list[torch.Tensor]   # per seed, per test image: classified correctly ([]: unknown)

    @property
    @abstractmethod
    def per_epoch(self) -> int:
        """Batches per epoch (the regularizer's epoch schedule is in epochs)."""

    @property
    @abstractmethod
    def model_notes(self) -> list[str]:
        """The model's one-line notes for the record (``models.create``)."""

    @abstractmethod
    def iteration0(self, weight_decay: float) -> list[tuple[float, float, float]]:
        """Per seed (CE of the first batch, weight-decay term, penalty) at initialisation,
        leaving the training that follows unchanged."""

    @abstractmethod
    def set_bn_momentum(self, momentum: float) -> None:
        """Every BatchNorm's momentum (the protocol's schedule, set before a step)."""

    @abstractmethod
    def step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One iteration at rate ``lr``: (loss, CE, penalty) on the device, not synced; sets
        ``last_aux``."""

    @abstractmethod
    def evaluate(self) -> list[tuple[float, float]]:
        """Per seed (accuracy %, mean CE) on the evaluated set; sets ``last_correct``."""

    @abstractmethod
    def layer_energies(self) -> list[dict[str, float]]:
        """Per seed, the hyperspherical energy of every regularized layer."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything a checkpoint needs to resume exactly (model, optimiser, regularizer,
        batch stream; the RNG states are the loop's)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Back to the state ``state_dict`` returned."""
