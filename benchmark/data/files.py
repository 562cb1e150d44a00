"""Batches of a file-backed dataset (``datasets.folders.FileDataset``: ImageNet) decoded by a
DataLoader, next to the tensor stream of ``benchmark.data.images`` and with its contract: ``next()``
gives (uint8 images (B, C, H, W), labels (B,)) on the run's device, ``epoch`` / ``per_epoch``,
and a state of (epoch, position) from which a run resumes exactly.

Sampling is the tensor stream's: each epoch's order is ``torch.randperm`` from a generator seeded
with (seed, epoch) (the same formula), consecutive global batches, the last partial one dropped
(``data.drop_last``). Under DDP, rank r of W takes the r-th contiguous ``batch / W`` slice of
every global batch (as ``training.distributed.ShardedBatchStream``). Augmentation
(RandomResizedCrop + flip; torchvision's reference recipe) is seeded PER IMAGE from the same
generator: the batches do not depend on the number of loader workers, on the world size, or on
where a run resumed. Workers (``runtime.loader_workers``) decode in parallel, batches go through
pinned memory on CUDA.

Evaluation (:func:`eval_batches`): resize to ``round(size * 256 / 224)`` (256 for 224) and centre
crop, any contiguous range of the test set (one rank's share of a sharded evaluation).
"""

from __future__ import annotations

import os
import weakref

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from benchmark.config import ConfigError, Data
from benchmark.data.stream import EpochCursor, batches_per_epoch, epoch_generator
from benchmark.data.datasets.folders import FileDataset

# torchvision references/classification/presets.py: eval resize 256 for a 224 crop.
RESIZE_RATIO = 256 / 224
EVAL_BATCH = 250


def resolve_workers(workers: int) -> int:
    """runtime.loader_workers: 0 = min(8, the cores this process may use)."""
    if workers > 0:
        return workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


def train_transform(cfg: Data):
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(cfg.image_size, antialias=True)]
    if cfg.augmentation.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.PILToTensor()])


def eval_transform(cfg: Data):
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(round(cfg.image_size * RESIZE_RATIO), antialias=True),
                       v2.CenterCrop(cfg.image_size), v2.PILToTensor()])


def _decode(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


class SeededImages(TorchDataset):
    """Samples indexed by (sample index, augmentation seed): the image decoded, transformed under
    its own seed (so the draw does not depend on the worker that does it), as uint8 (C, H, W)."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = _decode(path)
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class EpochBatches:
    """The batch sampler: from the stream's (epoch, position) to the end of the epoch, this
    rank's slice of each global batch as (index, seed) pairs. Read when an epoch's iteration
    starts (in the main process)."""

    def __init__(self, stream: "FileBatchStream"):
        # a weak reference: a cycle stream -> loader -> sampler -> stream would leave the
        # loader's workers to the cyclic collector, whose shutdown of them waits 5 s
        self.stream = weakref.proxy(stream)

    def __len__(self) -> int:
        return self.stream.per_epoch - self.stream.position

    def __iter__(self):
        s = self.stream
        perm, seeds = s.epoch_order(s.epoch)
        for p in range(s.position, s.per_epoch):
            lo = p * s.batch_size + s.rank * s.local_batch
            hi = min(lo + s.local_batch, s.n) if not s.cfg.drop_last else lo + s.local_batch
            yield [(int(perm[i]), int(seeds[i])) for i in range(lo, hi)]


class FileBatchStream(EpochCursor):
    """The recipe's sampling over files (module docstring)."""

    def __init__(self, ds: FileDataset, batch_size: int, seed: int, cfg: Data,
                 device: torch.device, rank: int = 0, world: int = 1, workers: int = 0):
        self.n = len(ds.train_samples)
        self.batch_size, self.seed, self.cfg, self.device = batch_size, seed, cfg, device
        self.rank, self.world, self.local_batch = rank, world, batch_size // world
        self.per_epoch = batches_per_epoch(self.n, batch_size, cfg.drop_last)
        if self.per_epoch < 1:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set "
                              f"({self.n} images)")
        workers = resolve_workers(workers)
        self.loader = DataLoader(SeededImages(ds.train_samples, train_transform(cfg)),
                                 batch_sampler=EpochBatches(self), num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers else None)
        self.epoch, self.position = 0, 0
        self._batches = None

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(order (n,), per-position augmentation seeds (n,)) of an epoch: the tensor stream's
        generator (``stream.epoch_generator``), so the order is the tensor stream's for the same
        seed and size."""
        g = epoch_generator(self.seed, epoch)
        perm = torch.randperm(self.n, generator=g)
        return perm, torch.randint(0, 2**62, (self.n,), generator=g)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of this rank: uint8 images (B, C, H, W) augmented, labels (B,)."""
        if self._batches is None:
            self._batches = iter(self.loader)
        x, y = next(self._batches)
        super().advance()  # the loader's iterator moved with the cursor
        if self.position == 0:  # a new epoch: a new iterator, from its first batch
            self._batches = None
        return (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))

    def advance(self) -> None:
        """Skip a batch without decoding it: the loader restarts at the new position."""
        super().advance()
        self._batches = None

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._batches = None  # the next batch comes from the new position


def eval_batches(ds: FileDataset, cfg: Data, device: torch.device, workers: int = 0):
    """``batches_of(lo, hi)``: the test images lo..hi, evaluation transform, in batches of
    ``EVAL_BATCH`` (uint8 images, labels), decoded by a DataLoader."""
    images = SeededImages(ds.test_samples, eval_transform(cfg))
    workers = resolve_workers(workers)

    def batches_of(lo: int, hi: int):
        if hi <= lo:
            return iter(())
        loader = DataLoader(torch.utils.data.Subset(images, range(lo, hi)), batch_size=EVAL_BATCH,
                            num_workers=workers, pin_memory=device.type == "cuda")
        return iter(loader)

    return batches_of
