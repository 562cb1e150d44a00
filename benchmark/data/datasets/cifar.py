"""CIFAR-10 and CIFAR-100 through torchvision (``$COMHE_DATA/cifar-*``; ``--download`` fetches)."""

from __future__ import annotations

import torch

from benchmark.config import ConfigError, Data

from benchmark.data.datasets.registry import Dataset, data_dir, download_allowed, register_dataset


def _cifar(classes: int) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    root = data_dir()
    try:
        train = cls(root, train=True, download=download_allowed())
        test = cls(root, train=False, download=download_allowed())
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise ConfigError(
            f"cifar{classes} not found or corrupted under {root / cls.base_folder} ({exc}); extract "
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


def _missing(classes: int) -> str | None:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    folder = data_dir() / cls.base_folder
    missing = [f for f, _ in (*cls.train_list, *cls.test_list) if not (folder / f).is_file()]
    if not missing:
        return None
    return (f"cifar{classes} not found under {folder} (missing {missing[0]}); extract "
            f"{cls.filename} there, set COMHE_DATA to its parent, or pass --download")


@register_dataset("cifar10", num_classes=10, offline=False, channels=3, image_size=32,
                  train_size=50_000, missing=lambda: _missing(10),
                  description="CIFAR-10, 50k/10k 32x32 colour images (torchvision)")
def cifar10(arg: str | None, cfg: Data) -> Dataset:
    return _cifar(10)


@register_dataset("cifar100", num_classes=100, offline=False, channels=3, image_size=32,
                  train_size=50_000, missing=lambda: _missing(100),
                  description="CIFAR-100, 50k/10k 32x32 colour images, the paper's dataset (torchvision)")
def cifar100(arg: str | None, cfg: Data) -> Dataset:
    return _cifar(100)
