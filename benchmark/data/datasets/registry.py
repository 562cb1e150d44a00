"""The dataset registry: a dataset is one file and one ``@register_dataset`` (timm's pattern).

    @register_dataset("my_set", num_classes=10, offline=True, description="...")
    def my_set(arg: str | None, cfg: Data) -> Dataset: ...

A loader gets the name's argument (``synthetic:100`` -> "100", else None) and the protocol's
``data`` settings, and returns the full dataset on the CPU at its native image size; :func:`load` then fits
the images to the protocol's ``data.image_size``, holds out ``data.validation`` images
(``benchmark.data.datasets.split``: they replace the test set) and applies ``max_train`` / ``max_test``.
``offline`` says whether the loader works with no network and no files outside the Python
packages; profiles that must run anywhere replace every other dataset by its stand-in,
``synthetic:<num_classes>`` (:func:`offline_stand_in`).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError, Data
from regularizers import hint

from benchmark.data.datasets import split
from benchmark.data.stream import batches_per_epoch

__all__ = ["KINDS", "Dataset", "DatasetInfo", "register_dataset", "available", "info", "check_name",
           "load", "preflight", "offline_stand_in", "data_dir", "download_allowed"]


@dataclass
class Dataset:
    """``kind`` "image": uint8 images (N, C, H, W); "points": float32 point clouds (N, P, C)
    (``benchmark.data.points`` samples and augments them). Labels int64 (N,). (The third kind,
    "files", is ``datasets.folders.FileDataset``: images decoded from disk while training.)"""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    synthetic: bool = False
    kind: str = "image"  # "image" or "points" (KINDS)
    # What test_x/test_y hold: "test" (the test set) or "validation" (images held out of the
    # training set by data.validation; the test set is not loaded into the dataset then).
    split: str = "test"

    @property
    def in_chans(self) -> int:
        """Image channels, or coordinates per point."""
        return self.train_x.shape[-1] if self.kind == "points" else self.train_x.shape[1]

    def to(self, device: torch.device | str) -> "Dataset":
        for k in ("train_x", "train_y", "test_x", "test_y"):
            setattr(self, k, getattr(self, k).to(device))
        return self


# What a dataset holds, declared by its registration and carried by what its loader returns:
# "image" and "points" are tensors the run keeps on its device (benchmark.data.images / points
# stream them); "files" are images read from disk while training (benchmark.data.files).
KINDS = ("image", "points", "files")

Loader = Callable[[str | None, Data], Dataset]  # (name's argument or None, protocol data)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset. ``arg``: what ``name:<arg>`` means, or None if it takes none."""

    name: str
    loader: Loader
    num_classes: int | None  # None: given by the argument (synthetic:<classes>)
    offline: bool
    description: str
    arg: str | None = None
    check_arg: Callable[[str], bool] | None = None
    # What a run would find, known without loading (checked before any run starts):
    channels: int | None = None
    image_size: int | None = None  # native; None: the protocol's
    train_size: int | None = None
    missing: Callable[[], str | None] | None = None  # one line naming missing files, or None
    kind: str = "image"  # one of KINDS ("points": no image size, benchmark.data.points)
    stand_in: str | None = None  # the offline stand-in; None: synthetic:<num_classes>
    points: int | None = None  # point clouds: points stored per shape (data.points.num_points <= it)

    @property
    def usage(self) -> str:
        return f"{self.name}:<{self.arg}>" if self.arg else self.name


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, num_classes: int | None, offline: bool, description: str,
                     arg: str | None = None, check_arg: Callable[[str], bool] | None = None,
                     channels: int | None = None, image_size: int | None = None,
                     train_size: int | None = None,
                     missing: Callable[[], str | None] | None = None,
                     kind: str = "image", stand_in: str | None = None,
                     points: int | None = None):
    """Decorator registering ``loader(arg, cfg) -> Dataset`` under ``name``. ``channels``,
    ``image_size`` (native), ``train_size`` and ``missing()`` (a line naming the files that are
    not on disk, or None) let :func:`preflight` reject a run before anything loads. ``kind``:
    one of ``KINDS`` ("points": point clouds, ``channels`` is then the coordinates per point;
    "files": images decoded from disk while training, the loader returns a ``FileDataset``);
    ``stand_in``: the offline dataset profiles use instead (default ``synthetic:<classes>``);
    ``points``: point clouds only, the points stored per shape."""
    if kind not in KINDS:
        raise ValueError(f"dataset {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def deco(loader: Loader) -> Loader:
        old = _REGISTRY.get(name)
        if old is not None and old.loader.__qualname__ != loader.__qualname__:
            raise ValueError(f"dataset name {name!r} is already registered by {old.loader.__module__}")
        _REGISTRY[name] = DatasetInfo(name, loader, num_classes, offline, description, arg, check_arg,
                                      channels, image_size, train_size, missing, kind, stand_in,
                                      points)
        return loader

    return deco


def available(pattern: str | None = None) -> list[str]:
    """Registered names (sorted), optionally filtered by a shell pattern."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def info(name: str) -> DatasetInfo:
    """The registration of ``name`` (``base:arg`` accepted); ConfigError (one line) otherwise."""
    check_name(name)
    return _REGISTRY[name.partition(":")[0]]


def check_name(name: str) -> None:
    """One-line ConfigError for an unknown dataset or a wrong ``:<arg>``."""
    base, colon, arg = str(name).partition(":")
    if base not in _REGISTRY:
        usages = ", ".join(_REGISTRY[n].usage for n in available())
        raise ConfigError(f"unknown dataset '{name}'{hint(name, _REGISTRY)} (available: {usages})")
    entry = _REGISTRY[base]
    if colon and (entry.arg is None or entry.check_arg is None or not entry.check_arg(arg)):
        takes = [_REGISTRY[n].usage for n in available() if _REGISTRY[n].arg]
        raise ConfigError(f"dataset '{name}': only {', '.join(takes)} take an argument"
                          + (f" ({entry.usage})" if entry.arg else ""))


def preflight(name: str, cfg: Data, batch_size: int) -> None:
    """Without loading anything: the dataset's files are there (or may be downloaded), its images
    fit ``cfg.image_size`` (point clouds: it stores ``num_points`` per shape) and one batch fits
    in its training set. One-line ConfigError."""
    entry = info(name)
    size = entry.image_size or cfg.image_size
    if entry.kind == "files":
        _check_files_split(name, cfg)
    if entry.kind == "image" and size > cfg.image_size:
        raise ConfigError(f"{name} images are {size}x{size}, larger than data.image_size="
                          f"{cfg.image_size}; use data.image_size >= {size}")
    if entry.kind == "points" and entry.points is not None and cfg.points.num_points > entry.points:
        raise ConfigError(f"data.points.num_points={cfg.points.num_points} is more than the "
                          f"{entry.points} points {name} stores per shape; allowed: 1-{entry.points}")
    if cfg.validation and entry.train_size is not None and cfg.validation >= entry.train_size:
        raise ConfigError(f"data.validation={cfg.validation} holds out all of {name}'s "
                          f"{entry.train_size} training images; allowed: 0-{entry.train_size - 1}")
    if entry.train_size is not None:
        rest = entry.train_size - cfg.validation
        n_train = min(rest, cfg.max_train) if cfg.max_train else rest
        if batches_per_epoch(n_train, batch_size, cfg.drop_last) < 1:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set of {name} "
                              f"({n_train} images)")
    if entry.missing is not None and not download_allowed():
        problem = entry.missing()
        if problem:
            raise ConfigError(problem)


def offline_stand_in(name: str) -> str:
    """``name`` itself if it loads offline, else ``synthetic:<its number of classes>``."""
    entry = info(name)
    if entry.offline:
        return name
    return entry.stand_in or f"synthetic:{entry.num_classes}"


def data_dir() -> Path:
    """Where datasets are looked for: ``$COMHE_DATA``, default ``./data``."""
    return Path(os.environ.get("COMHE_DATA", "data")).expanduser()


def download_allowed() -> bool:
    """``--download`` (exported as COMHE_DOWNLOAD=1): loaders may fetch from the internet."""
    return os.environ.get("COMHE_DOWNLOAD", "0") == "1"


def load(name: str, cfg: Data) -> Dataset:
    """Load ``name`` on the CPU, images fitted to ``cfg.image_size``; with ``cfg.validation``
    the validation images replace the test set (``split.apply``); then capped by max_train (and
    max_test when there is no validation split)."""
    entry = info(name)
    arg = name.partition(":")[2] or None
    ds = entry.loader(arg, cfg)
    ds.name = name
    if ds.kind == "files":  # datasets.folders.FileDataset: its sizes and caps are its own
        _check_files_split(name, cfg)
        return ds
    if ds.kind == "image":
        ds.train_x, ds.test_x = (_fit_size(x, cfg.image_size) for x in (ds.train_x, ds.test_x))
    if cfg.validation:
        split.apply(ds, cfg.validation)  # before max_train: the split never depends on the cap
    if cfg.max_train:
        ds.train_x, ds.train_y = ds.train_x[: cfg.max_train], ds.train_y[: cfg.max_train]
    if cfg.max_test and not cfg.validation:
        ds.test_x, ds.test_y = ds.test_x[: cfg.max_test], ds.test_y[: cfg.max_test]
    return ds


def _check_files_split(name: str, cfg: Data) -> None:
    if cfg.validation:
        raise ConfigError(f"data.validation is not supported for the file-backed dataset "
                          f"{name} (not built yet); use data.validation: 0")


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
