"""scikit-learn's digits: 1,797 real 8x8 images shipped inside the package, fully offline."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.config import Data

from benchmark.data.datasets.registry import Dataset, register_dataset


@register_dataset("digits", num_classes=10, offline=True, channels=1, image_size=8, train_size=1437,
                  description="scikit-learn's 1,797 8x8 digits, fixed 80/20 split (offline)")
def digits(arg: str | None, cfg: Data) -> Dataset:
    """A fixed stratified 80/20 split (not seeded by the run: every seed sees the same test set).
    Pixel values 0..16 are mapped to 0..255 so the recipe's input scaling applies unchanged."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    t = torch.from_numpy
    return Dataset("digits", t(xtr), t(ytr).long(), t(xte), t(yte).long(), num_classes=10)
