"""Datasets as device-resident uint8 tensors, and the recipe's sampling and augmentation.

Why tensors and not a DataLoader: at batch 128 a GPU step takes ~2 ms, less than a DataLoader
needs to collate a batch. The whole training set (CIFAR: 150 MB as uint8) lives on the device;
each epoch's order, crop offsets and flips are drawn at once from a generator seeded by
(run seed, epoch) on the CPU, so every device and every regularizer sees the same stream for the
same seed (runs pair by seed) and a resumed run needs only (epoch, position) to continue.
"""

from __future__ import annotations

import difflib
import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError, Data

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "digits", "synthetic")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Dataset:
    """Images are uint8 (N, C, H, W) at the protocol's image size; labels int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    synthetic: bool = False

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    def to(self, device: torch.device) -> "Dataset":
        for k in ("train_x", "train_y", "test_x", "test_y"):
            setattr(self, k, getattr(self, k).to(device))
        return self


def data_dir() -> Path:
    return Path(os.environ.get("COMHE_DATA", "data")).expanduser()


def download_allowed() -> bool:
    return os.environ.get("COMHE_DOWNLOAD", "0") == "1"


def check_dataset_name(name: str) -> None:
    base, _, arg = name.partition(":")
    if base not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown dataset '{name}'{hint} (available: {', '.join(DATASETS)}, synthetic:<classes>)")
    if arg and (base != "synthetic" or not arg.isdigit() or int(arg) < 2):
        raise ConfigError(f"dataset '{name}': only 'synthetic:<classes>' takes an argument (classes >= 2)")


# What set-up would find, known without loading: (channels, native image size, classes,
# training images). Checked before any run so an impossible setting is one line, not a
# ``failed`` record.
SHAPES = {"cifar10": (3, 32, 10, 50000), "cifar100": (3, 32, 100, 50000),
          "fashion_mnist": (1, 28, 10, 60000), "digits": (1, 8, 10, 1437)}


def check_dataset(name: str, cfg: Data, batch_size: int) -> tuple[int, int]:
    """(channels, classes) of ``name`` after checking, without loading it, that it is on disk
    (or may be downloaded), that its images fit ``cfg.image_size`` and that one batch fits in
    its training set. One-line ConfigError otherwise."""
    check_dataset_name(name)
    base, _, arg = name.partition(":")
    if base == "synthetic":
        chans, size, classes, n_train = 3, cfg.image_size, int(arg) if arg else 10, 4096
    else:
        chans, size, classes, n_train = SHAPES[base]
    if size > cfg.image_size:
        raise ConfigError(f"{name} images are {size}x{size}, larger than data.image_size="
                          f"{cfg.image_size}; use data.image_size >= {size}")
    if cfg.max_train:
        n_train = min(n_train, cfg.max_train)
    per_epoch = n_train // batch_size if cfg.drop_last else -(-n_train // batch_size)
    if per_epoch < 1:
        raise ConfigError(f"batch_size {batch_size} is larger than the training set of {name} "
                          f"({n_train} images)")
    if base in ("cifar10", "cifar100") and not download_allowed():
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if base == "cifar10" else CIFAR100
        folder = data_dir() / cls.base_folder
        missing = [f for f, _ in (*cls.train_list, *cls.test_list) if not (folder / f).is_file()]
        if missing:
            raise ConfigError(f"{base} not found under {folder} (missing {missing[0]}); extract "
                              f"{cls.filename} there, set COMHE_DATA to its parent, or pass --download")
    if base == "fashion_mnist" and not download_allowed() and not DEBIAN_FASHION_MNIST.is_dir():
        raw = data_dir() / "FashionMNIST" / "raw"
        names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
        missing = [n for n in names if not (raw / n).is_file()]
        if missing:
            raise ConfigError(f"fashion_mnist not found under {raw} (missing {missing[0]}); run "
                              "`apt-get install dataset-fashion-mnist` (Debian), put the idx files "
                              "there, or pass --download")
    return chans, classes


def load_dataset(name: str, cfg: Data) -> Dataset:
    """Load ``name`` on the CPU, resized to ``cfg.image_size`` and capped by max_train/max_test."""
    check_dataset_name(name)
    base, _, arg = name.partition(":")
    ds = {
        "cifar10": lambda: _torchvision_cifar(10),
        "cifar100": lambda: _torchvision_cifar(100),
        "fashion_mnist": _fashion_mnist,
        "digits": _digits,
        "synthetic": lambda: _synthetic(int(arg) if arg else 10, cfg.image_size),
    }[base]()
    ds.name = name
    ds.train_x, ds.test_x = (_fit_size(x, cfg.image_size) for x in (ds.train_x, ds.test_x))
    if cfg.max_train:
        ds.train_x, ds.train_y = ds.train_x[: cfg.max_train], ds.train_y[: cfg.max_train]
    if cfg.max_test:
        ds.test_x, ds.test_y = ds.test_x[: cfg.max_test], ds.test_y[: cfg.max_test]
    return ds


def _fit_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Smaller images are zero-padded (28 -> 32) or, if much smaller (8x8 digits), upsampled."""
    h = x.shape[-1]
    if h == size:
        return x.contiguous()
    if h < size and size % h == 0 and size // h >= 2 and h <= size // 2:
        return x.repeat_interleave(size // h, dim=-2).repeat_interleave(size // h, dim=-1)
    if h < size:
        lo = (size - h) // 2
        return F.pad(x, (lo, size - h - lo, lo, size - h - lo)).contiguous()
    raise ConfigError(f"images of size {h} are larger than data.image_size={size}")


def _torchvision_cifar(classes: int) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    root = data_dir()
    folder = cls.base_folder
    try:
        train = cls(root, train=True, download=download_allowed())
        test = cls(root, train=False, download=download_allowed())
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise ConfigError(
            f"cifar{classes} not found or corrupted under {root / folder} ({exc}); extract "
            f"{cls.filename} there, set COMHE_DATA to its parent, or pass --download"
        ) from None
    return Dataset(
        name=f"cifar{classes}",
        train_x=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_y=torch.tensor(train.targets, dtype=torch.long),
        test_x=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_y=torch.tensor(test.targets, dtype=torch.long),
        num_classes=classes,
    )


def _fashion_mnist() -> Dataset:
    from torchvision.datasets import FashionMNIST

    root = data_dir()
    raw = root / "FashionMNIST" / "raw"
    # Debian's dataset-fashion-mnist package ships the original .gz files: unpack them where
    # torchvision looks, so `apt-get install dataset-fashion-mnist` is all a machine needs.
    if DEBIAN_FASHION_MNIST.is_dir():
        for gz in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
            target = raw / gz.name[: -len(".gz")]
            if not target.exists():
                raw.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp")
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                tmp.replace(target)
    try:
        train = FashionMNIST(root, train=True, download=download_allowed())
        test = FashionMNIST(root, train=False, download=download_allowed())
    except RuntimeError:
        raise ConfigError(
            f"fashion_mnist not found under {raw}; run `apt-get install dataset-fashion-mnist` "
            "(Debian), put the idx files there, or pass --download"
        ) from None
    return Dataset("fashion_mnist", train.data[:, None], train.targets.long(),
                   test.data[:, None], test.targets.long(), num_classes=10)


def _digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits, shipped inside the package: fully offline.

    A fixed stratified 80/20 split (not seeded by the run: every seed sees the same test set).
    Pixel values 0..16 are mapped to 0..255 so the recipe's input scaling applies unchanged.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    t = torch.from_numpy
    return Dataset("digits", t(xtr), t(ytr).long(), t(xte), t(yte).long(), num_classes=10)


def _synthetic(classes: int, size: int, n_train: int = 4096, n_test: int = 1024) -> Dataset:
    """Random images with a class-dependent colour shift: learnable, for throughput and plumbing.

    Marked synthetic in every record; never a result.
    """
    g = torch.Generator().manual_seed(1234)
    centers = torch.randint(40, 216, (classes, 3, 1, 1), generator=g)

    def make(n):
        y = torch.randint(0, classes, (n,), generator=g)
        noise = torch.randint(-40, 41, (n, 3, size, size), generator=g)
        return (centers[y] + noise).clamp(0, 255).to(torch.uint8), y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return Dataset(f"synthetic:{classes}", xtr, ytr, xte, yte, num_classes=classes, synthetic=True)


# --------------------------------------------------------------------------------------------
# Sampling and augmentation


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


class BatchStream:
    """The recipe's sampling: reshuffle every epoch, consecutive batches, last partial dropped.

    Each epoch's permutation and augmentation parameters come from a CPU generator seeded with
    (seed, epoch): deterministic, device-independent, resumable from (epoch, position).
    """

    def __init__(self, ds: Dataset, batch_size: int, seed: int, cfg: Data, train_aug: bool = True):
        self.x, self.y = ds.train_x, ds.train_y
        self.n = self.x.shape[0]
        self.batch_size = batch_size
        self.per_epoch = self.n // batch_size if cfg.drop_last else -(-self.n // batch_size)
        if self.per_epoch < 1:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({self.n} images)")
        self.seed, self.cfg, self.train_aug = seed, cfg, train_aug
        self.maps = pad_maps(self.x.shape[-2], self.x.shape[-1], cfg.augmentation.pad,
                             cfg.augmentation.pad_mode, self.x.device)
        self.epoch, self.position = 0, 0
        self._epoch_loaded = -1

    def _load_epoch(self) -> None:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        a = self.cfg.augmentation
        self.perm = torch.randperm(self.n, generator=g).to(self.x.device)
        self.oy = torch.randint(0, 2 * a.pad + 1, (self.n,), generator=g).to(self.x.device)
        self.ox = torch.randint(0, 2 * a.pad + 1, (self.n,), generator=g).to(self.x.device)
        flips = torch.rand(self.n, generator=g) < 0.5
        self.flip = (flips & a.flip).to(self.x.device)
        self._epoch_loaded = self.epoch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: uint8 images (B, C, H, W) augmented, labels (B,)."""
        if self._epoch_loaded != self.epoch:
            self._load_epoch()
        batch = take_batch(self, self.perm, self.oy, self.ox, self.flip, self.current_slice())
        self.advance()
        return batch

    def current_slice(self) -> slice:
        lo = self.position * self.batch_size
        return slice(lo, min(lo + self.batch_size, self.n))

    def advance(self) -> None:
        """Move to the next batch position (and epoch) without producing the batch."""
        self.position += 1
        if self.position == self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class PackedBatchStream:
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
        self._epoch_loaded = -1

    def _load_epoch(self) -> None:
        for s in self.streams:
            s.epoch = self.epoch
            s._load_epoch()
        self.perm, self.oy, self.ox, self.flip = (
            torch.stack([getattr(s, k) for s in self.streams]) for k in ("perm", "oy", "ox", "flip"))
        self._epoch_loaded = self.epoch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of every seed: uint8 images (S, B, C, H, W) augmented, labels (S, B)."""
        first = self.streams[0]
        if self._epoch_loaded != self.epoch:
            self._load_epoch()
        lo = self.position * first.batch_size
        batch = take_batch(first, self.perm, self.oy, self.ox, self.flip,
                           slice(lo, min(lo + first.batch_size, first.n)))
        self.advance()
        return batch

    def advance(self) -> None:
        self.position += 1
        if self.position == self.streams[0].per_epoch:
            self.epoch, self.position = self.epoch + 1, 0

    @property
    def n(self) -> int:
        return self.streams[0].n

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def scale_input(x: torch.Tensor, mode: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> float: "tf" is (x - 127.5) / 128 as the authors' code; "unit" is x / 255."""
    x = x.to(dtype)
    return (x - 127.5) / 128.0 if mode == "tf" else x / 255.0
