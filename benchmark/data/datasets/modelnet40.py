"""ModelNet-40 as the PointNet release: ``modelnet40_ply_hdf5_2048`` (Qi et al. 2017).

The release (github.com/charlesq34/pointnet, provider.py: ``modelnet40_ply_hdf5_2048.zip``) holds
``ply_data_train{0..4}.h5`` (9,840 shapes) and ``ply_data_test{0,1}.h5`` (2,468 shapes), each
with ``data`` (n, 2048, 3) float32 points (centred, in the unit sphere) and ``label`` (n, 1)
uint8 class indices in 0..39. They are looked for under ``$COMHE_DATA/modelnet40_ply_hdf5_2048/``;
with ``--download`` a missing release is fetched (``MODELNET40_URL``, overridable with
``$COMHE_MODELNET40_URL``: the original Stanford link is often offline) and unpacked there.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmark.config import ConfigError, Data

from benchmark.data.datasets.registry import Dataset, data_dir, download_allowed, register_dataset

RELEASE = "modelnet40_ply_hdf5_2048"
TRAIN_FILES = tuple(f"ply_data_train{i}.h5" for i in range(5))
TEST_FILES = tuple(f"ply_data_test{i}.h5" for i in range(2))
MODELNET40_URL = "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"
N_TRAIN, N_TEST, N_POINTS = 9_840, 2_468, 2_048


def release_dir(root: Path | None = None) -> Path:
    return (data_dir() if root is None else Path(root)) / RELEASE


def _missing() -> str | None:
    folder = release_dir()
    absent = [n for n in TRAIN_FILES + TEST_FILES if not (folder / n).is_file()]
    if not absent:
        return None
    return (f"modelnet40 not found: {folder} lacks {', '.join(absent)} (the PointNet HDF5 release "
            f"{RELEASE}.zip: ply_data_train0-4.h5, ply_data_test0-1.h5); unpack it there, set "
            "COMHE_DATA, or pass --download")


def read_h5(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, P, 3) float32 and labels (N,) int64 of release files, concatenated in order."""
    xs, ys = [], []
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                xs.append(np.asarray(f["data"][:], dtype=np.float32))
                ys.append(np.asarray(f["label"][:]).reshape(-1).astype(np.int64))
        except (OSError, KeyError) as exc:
            raise ConfigError(f"{path} is not a release file with 'data' and 'label' "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def write_release(root: Path, train: tuple[torch.Tensor, torch.Tensor],
                  test: tuple[torch.Tensor, torch.Tensor]) -> Path:
    """Write points and labels in the release's layout under ``root/modelnet40_ply_hdf5_2048``
    (train split over 5 files, test over 2; ``data`` float32, ``label`` (n, 1) uint8), with
    the release's ``train_files.txt`` / ``test_files.txt``. For tests and stand-ins."""
    folder = release_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for names, (x, y), listing in ((TRAIN_FILES, train, "train_files.txt"),
                                   (TEST_FILES, test, "test_files.txt")):
        for name, xi, yi in zip(names, np.array_split(x.numpy(), len(names)),
                                np.array_split(y.numpy(), len(names))):
            with h5py.File(folder / name, "w") as f:
                f.create_dataset("data", data=xi.astype(np.float32))
                f.create_dataset("label", data=yi.astype(np.uint8).reshape(-1, 1))
        (folder / listing).write_text("".join(f"data/{RELEASE}/{n}\n" for n in names))
    return folder


def _download(root: Path) -> None:
    url = os.environ.get("COMHE_MODELNET40_URL", MODELNET40_URL)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{RELEASE}.zip"
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(archive.with_suffix(".part"), "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as exc:
        raise ConfigError(f"modelnet40: download from {url} failed ({exc}); fetch {RELEASE}.zip "
                          f"by hand into {root} or set COMHE_MODELNET40_URL") from None
    archive.with_suffix(".part").replace(archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(root)


@register_dataset("modelnet40", num_classes=40, offline=False, channels=3, kind="points",
                  train_size=N_TRAIN, missing=_missing, stand_in="synthetic_shapes", points=2048,
                  description="ModelNet-40 point clouds, 9,840/2,468 shapes of 2,048 points "
                              "(PointNet's HDF5 release, read with h5py)")
def modelnet40(arg: str | None, cfg: Data) -> Dataset:
    if _missing() is not None and download_allowed():
        _download(data_dir())
    problem = _missing()
    if problem:
        raise ConfigError(problem)
    folder = release_dir()
    train_x, train_y = read_h5([folder / n for n in TRAIN_FILES])
    test_x, test_y = read_h5([folder / n for n in TEST_FILES])
    return Dataset("modelnet40", train_x, train_y, test_x, test_y, num_classes=40, kind="points")
