"""Random images with a class-dependent colour shift: for throughput and plumbing, never a result."""

from __future__ import annotations

import torch

from benchmark.config import Data

from benchmark.data.datasets.registry import Dataset, register_dataset

N_TRAIN, N_TEST = 4096, 1024


@register_dataset("synthetic", num_classes=10, offline=True, arg="classes", channels=3,
                  train_size=N_TRAIN,
                  check_arg=lambda a: a.isdigit() and int(a) >= 2,
                  description="generated colour images at the protocol's image size, learnable; marked synthetic in every "
                              "record (synthetic:<classes>, default 10)")
def synthetic(arg: str | None, cfg: Data) -> Dataset:
    classes, size = (int(arg) if arg else 10), cfg.image_size
    g = torch.Generator().manual_seed(1234)
    centers = torch.randint(40, 216, (classes, 3, 1, 1), generator=g)

    def make(n):
        y = torch.randint(0, classes, (n,), generator=g)
        noise = torch.randint(-40, 41, (n, 3, size, size), generator=g)
        return (centers[y] + noise).clamp(0, 255).to(torch.uint8), y

    xtr, ytr = make(N_TRAIN)
    xte, yte = make(N_TEST)
    return Dataset(f"synthetic:{classes}", xtr, ytr, xte, yte, num_classes=classes, synthetic=True)
