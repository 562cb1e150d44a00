"""Fashion-MNIST through torchvision; Debian's ``dataset-fashion-mnist`` package works offline."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from benchmark.config import ConfigError, Data

from benchmark.data.datasets.registry import Dataset, data_dir, download_allowed, register_dataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def unpack_idx_gz(sources: list[Path], root: Path) -> None:
    """Unpack ``*-ubyte.gz`` files found in ``sources`` to ``root/FashionMNIST/raw`` (where
    torchvision looks), skipping files already there; each file appears whole or not at all."""
    raw = root / "FashionMNIST" / "raw"
    for src in sources:
        for gz in sorted(Path(src).glob("*-ubyte.gz")):
            target = raw / gz.name[: -len(".gz")]
            if target.exists():
                continue
            raw.mkdir(parents=True, exist_ok=True)
            # a temporary name of this process's own: two workers unpacking at once (the first
            # runs of a sweep) must not move each other's half-written file
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with gzip.open(gz, "rb") as f, os.fdopen(fd, "wb") as g:
                    shutil.copyfileobj(f, g)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def _missing() -> str | None:
    root = data_dir()
    raw = root / "FashionMNIST" / "raw"
    sources = [root / "fashion-mnist-gz", DEBIAN_FASHION_MNIST]
    absent = [n for n in IDX_FILES if not (raw / n).is_file()
              and not any((Path(s) / f"{n}.gz").is_file() for s in sources)]
    if not absent:
        return None
    return (f"fashion_mnist not found under {raw} (missing {absent[0]}); run `apt-get install "
            "dataset-fashion-mnist` (Debian), put the idx files there, or pass --download")


@register_dataset("fashion_mnist", num_classes=10, offline=False, channels=1, image_size=28,
                  train_size=60_000, missing=_missing,
                  description="Fashion-MNIST, 60k/10k 28x28 grey images, zero-padded to 32 (torchvision)")
def fashion_mnist(arg: str | None, cfg: Data) -> Dataset:
    from torchvision.datasets import FashionMNIST

    root = data_dir()
    # `apt-get install dataset-fashion-mnist` (or the .gz files under $COMHE_DATA/fashion-mnist-gz)
    # is all a machine needs: unpack them where torchvision looks.
    unpack_idx_gz([root / "fashion-mnist-gz", DEBIAN_FASHION_MNIST], root)
    try:
        train = FashionMNIST(root, train=True, download=download_allowed())
        test = FashionMNIST(root, train=False, download=download_allowed())
    except RuntimeError:
        raise ConfigError(
            f"fashion_mnist not found under {root / 'FashionMNIST' / 'raw'}; run `apt-get install "
            "dataset-fashion-mnist` (Debian), put the idx files there, or pass --download"
        ) from None
    return Dataset("fashion_mnist", train.data[:, None], train.targets.long(),
                   test.data[:, None], test.targets.long(), num_classes=10)
