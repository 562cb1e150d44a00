"""The recipe's sampling and augmentation over device-resident uint8 tensors.

Datasets themselves come from the registry in ``benchmark.data.datasets``.

Why tensors and not a DataLoader: at batch 128 a GPU step takes ~2 ms, less than a DataLoader
needs to collate a batch. The whole training set (CIFAR: 150 MB as uint8) lives on the device;
each epoch's order, crop offsets and flips are drawn at once from a generator seeded by
(run seed, epoch) on the CPU, so every device and every regularizer sees the same stream for the
same seed (runs pair by seed) and a resumed run needs only (epoch, position) to continue. A
dataset too large for the device (ImageNet) is file-backed instead: ``benchmark.data.files``
decodes it with a DataLoader under the same sampling contract.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError, Data
from benchmark.data.datasets import Dataset
from benchmark.data.stream import EpochCursor, batches_per_epoch, epoch_generator


def pad_index(n: int, pad: int, mode: str) -> torch.Tensor:
    """Source index for each position of an axis of length n padded by ``pad`` on both sides.

    symmetric: edge included (..., 1, 0 | 0, 1, ..., n-1 | n-1, n-2, ...), as TF's SYMMETRIC.
    reflect:   edge excluded (..., 2, 1 | 0, 1, ..., n-1 | n-2, ...).
    """
    i = torch.arange(-pad, n + pad)
    if mode == "symmetric":
        i = torch.where(i < 0, -i - 1, i)
        i = torch.where(i >= n, 2 * n - 1 - i, i)
    elif mode == "reflect":
        i = i.abs()
        i = torch.where(i >= n, 2 * n - 2 - i, i)
    else:
        raise ValueError(f"pad_index: mode must be symmetric or reflect, got {mode!r}")
    return i


def pad_maps(h: int, w: int, pad: int, mode: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column source maps of ``augment`` (built once: a host-to-device copy per batch
    would be a sync, and cannot be recorded in a CUDA graph)."""
    if pad and mode == "zeros":
        rows, cols = torch.arange(h + 2 * pad), torch.arange(w + 2 * pad)
    else:
        rows, cols = pad_index(h, pad, mode), pad_index(w, pad, mode)
    return rows.to(device), cols.to(device)


def augment(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor,
            pad: int, mode: str, maps: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Pad by ``pad``, crop back to (H, W) at offsets (oy, ox), flip where ``flip``: one gather.

    x: (B, C, H, W); oy, ox: (B,) ints in [0, 2*pad]; flip: (B,) bool; maps: ``pad_maps`` of
    this shape (built here if not given). Returns (B, C, H, W).
    """
    B, C, H, W = x.shape
    rows_map, cols_map = maps if maps is not None else pad_maps(H, W, pad, mode, x.device)
    if pad and mode == "zeros":
        x = F.pad(x, (pad, pad, pad, pad))
    rows = rows_map[oy[:, None] + torch.arange(H, device=x.device)]          # (B, H)
    cols = ox[:, None] + torch.arange(W, device=x.device)                      # (B, W)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    cols = cols_map[cols]
    b = torch.arange(B, device=x.device)[:, None, None]
    out = x[b, :, rows[:, :, None], cols[:, None, :]]                          # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def take_batch(stream: "BatchStream", perm: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
               flip: torch.Tensor, sel) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``sel`` (a slice, or a device index tensor) of an epoch's order and augmentation,
    gathered and augmented in one go. perm/oy/ox/flip: (n,) or (S, n) for packed seeds; returns
    images (..., B, C, H, W) and labels (..., B)."""
    idx = perm[..., sel]
    x = stream.x[idx.reshape(-1)]
    if stream.train_aug:
        a = stream.cfg.augmentation
        x = augment(x, oy[..., sel].reshape(-1), ox[..., sel].reshape(-1),
                    flip[..., sel].reshape(-1), a.pad, a.pad_mode, stream.maps)
    return x.unflatten(0, idx.shape), stream.y[idx]


class _EpochBuffers(EpochCursor):
    """What the tensor streams share: the epoch's order and augmentation, drawn once per epoch."""

    epoch_loaded: int

    def ensure_epoch(self) -> None:
        """Draw the current epoch's order and augmentation if not drawn yet (public: the
        whole-step CUDA graph copies them into its static buffers)."""
        if self.epoch_loaded != self.epoch:
            self.load_epoch()

    def load_epoch(self) -> None:
        raise NotImplementedError

    @property
    def template(self) -> "BatchStream":
        """The single-seed stream whose dataset, batch size and maps this stream's batches use
        (itself; a packed stream's first seed)."""
        return self


class BatchStream(_EpochBuffers):
    """The recipe's sampling: reshuffle every epoch, consecutive batches, last partial dropped.

    Each epoch's permutation and augmentation parameters come from a CPU generator seeded with
    (seed, epoch) (``stream.epoch_generator``): deterministic, device-independent, resumable from (epoch, position).
    """

    def __init__(self, ds: Dataset, batch_size: int, seed: int, cfg: Data, train_aug: bool = True):
        self.x, self.y = ds.train_x, ds.train_y
        self.n = self.x.shape[0]
        self.batch_size = batch_size
        self.per_epoch = batches_per_epoch(self.n, batch_size, cfg.drop_last)
        if self.per_epoch < 1:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({self.n} images)")
        self.seed, self.cfg, self.train_aug = seed, cfg, train_aug
        self.maps = pad_maps(self.x.shape[-2], self.x.shape[-1], cfg.augmentation.pad,
                             cfg.augmentation.pad_mode, self.x.device)
        self.epoch, self.position = 0, 0
        self.epoch_loaded = -1

    def load_epoch(self) -> None:
        g = epoch_generator(self.seed, self.epoch)
        a = self.cfg.augmentation
        self.perm = torch.randperm(self.n, generator=g).to(self.x.device)
        self.oy = torch.randint(0, 2 * a.pad + 1, (self.n,), generator=g).to(self.x.device)
        self.ox = torch.randint(0, 2 * a.pad + 1, (self.n,), generator=g).to(self.x.device)
        flips = torch.rand(self.n, generator=g) < 0.5
        self.flip = (flips & a.flip).to(self.x.device)
        self.epoch_loaded = self.epoch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: uint8 images (B, C, H, W) augmented, labels (B,)."""
        self.ensure_epoch()
        batch = take_batch(self, self.perm, self.oy, self.ox, self.flip, self.current_slice())
        self.advance()
        return batch

    def current_slice(self) -> slice:
        lo = self.position * self.batch_size
        return slice(lo, min(lo + self.batch_size, self.n))


class PackedBatchStream(_EpochBuffers):
    """The batch streams of S seeds advanced together (packed seeds): (S, B, ...) per step.

    Every seed keeps its own epoch permutation and augmentation, drawn exactly as its own
    ``BatchStream`` would (same generator seeds), so seed s of a packed run sees the batches of
    the single run with that seed. Seeds share the dataset and batch size, so their epochs turn
    together; all S batches are gathered and augmented in one call, not S.
    """

    def __init__(self, streams: list[BatchStream]):
        first = streams[0]
        if any(s.x is not first.x or s.batch_size != first.batch_size for s in streams):
            raise ValueError("packed streams must share their dataset and batch size")
        self.streams = streams
        self.epoch, self.position = 0, 0
        self.epoch_loaded = -1

    def load_epoch(self) -> None:
        for s in self.streams:
            s.epoch = self.epoch
            s.load_epoch()
        self.perm, self.oy, self.ox, self.flip = (
            torch.stack([getattr(s, k) for s in self.streams]) for k in ("perm", "oy", "ox", "flip"))
        self.epoch_loaded = self.epoch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of every seed: uint8 images (S, B, C, H, W) augmented, labels (S, B)."""
        first = self.streams[0]
        self.ensure_epoch()
        lo = self.position * first.batch_size
        batch = take_batch(first, self.perm, self.oy, self.ox, self.flip,
                           slice(lo, min(lo + first.batch_size, first.n)))
        self.advance()
        return batch

    @property
    def template(self) -> BatchStream:
        return self.streams[0]

    @property
    def per_epoch(self) -> int:
        return self.streams[0].per_epoch

    @property
    def n(self) -> int:
        return self.streams[0].n


# torchvision's ImageNet channel statistics (references/classification/presets.py), on 0..1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scale_input(x: torch.Tensor, mode: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> float: "tf" is (x - 127.5) / 128 as the authors' code; "unit" is x / 255;
    "imagenet" is (x / 255 - mean) / std per channel (x: (..., 3, H, W))."""
    x = x.to(dtype)
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=x.device).view(3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD, dtype=dtype, device=x.device).view(3, 1, 1) * 255.0
        return (x - mean) / std
    return (x - 127.5) / 128.0 if mode == "tf" else x / 255.0
