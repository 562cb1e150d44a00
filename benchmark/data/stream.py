"""The batch-stream contract every training stream keeps (images, packed seeds, point clouds,
files), and the arithmetic they share.

A stream is a cursor over epochs: ``next()`` gives the next batch on the run's device and moves
the cursor, ``advance()`` moves it without producing the batch, and ``state_dict()`` is all a
checkpoint keeps of it, (epoch, position): every epoch's order is drawn again from a CPU
generator seeded by (run seed, epoch) (:func:`epoch_generator`), so a resumed run continues the
same batches on any device. Runs pair by seed because every stream draws its order with that one
formula; changing it changes every run's batches (and so every committed result), which is why it
is written once, here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

# The per-epoch generator's seed is seed * EPOCH_STRIDE + epoch: a prime stride keeps the seeds
# of (seed, epoch) pairs distinct for every epoch count a run can reach.
EPOCH_STRIDE = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of a run's epoch (its order, and for images its augmentation)."""
    return seed * EPOCH_STRIDE + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A fresh CPU generator seeded by :func:`epoch_seed`: CPU so every device draws the same."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Consecutive batches of an epoch of ``n`` samples: the last partial one dropped (the
    recipe's ``data.drop_last``) or kept. 0 means one batch does not fit in the training set."""
    return n // batch_size if drop_last else -(-n // batch_size)


@runtime_checkable
class TrainStream(Protocol):
    """What the training loop and the checkpoints use of a stream (module docstring)."""

    epoch: int
    position: int

    @property
    def per_epoch(self) -> int: ...

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def advance(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class EpochCursor:
    """Where a training stream stands: its epoch and the position of its next batch in it. Every
    stream (images, packed seeds, point clouds, files) moves and resumes through this."""

    epoch: int = 0
    position: int = 0
    per_epoch: int  # batches per epoch

    def advance(self) -> None:
        """Move to the next batch position (and epoch) without producing the batch."""
        self.position += 1
        if self.position == self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
