"""File-backed datasets: an ImageFolder layout (``train/<class>/*.jpg``, ``val/<class>/*.jpg``)
read from disk while training, for sets too large to hold on the device as uint8 tensors
(ImageNet: ~140 GB decoded). A loader returns a :class:`FileDataset` (file lists and labels, no
pixels); ``benchmark.data.files`` decodes and augments the images with a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.config import ConfigError

__all__ = ["FileDataset", "scan_image_folder", "even_subset"]


@dataclass
class FileDataset:
    """A dataset on disk: (path, class) samples of the training and test sets. ``test_y`` (n,)
    int64 labels of the test samples (what a record counts); ``kind`` "files" (the registry's
    vocabulary) is what routes it to ``benchmark.data.files``; ``test_batches`` is the run's
    evaluation loader (``files.eval_batches``), set when a run is set up."""

    name: str
    train_samples: list[tuple[str, int]]
    test_samples: list[tuple[str, int]]
    num_classes: int
    classes: list[str] = field(default_factory=list)
    synthetic: bool = False
    in_chans: int = 3
    kind: str = "files"
    test_batches: Callable | None = None

    @property
    def test_y(self) -> torch.Tensor:
        return torch.tensor([c for _, c in self.test_samples], dtype=torch.long)

    def to(self, device) -> "FileDataset":
        """Nothing moves: batches go to the device as they are decoded."""
        return self


def scan_image_folder(root: Path, what: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples sorted by class then file name, class names) of an ImageFolder directory
    (torchvision's scan: one folder per class, image extensions). One-line ConfigError when it
    holds no class folder or no image."""
    from torchvision.datasets import folder

    try:
        classes, class_to_idx = folder.find_classes(str(root))
        samples = folder.make_dataset(str(root), class_to_idx, extensions=folder.IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"{what}: cannot read class folders under '{root}' "
                          f"({str(exc).splitlines()[0]})") from None
    return [(str(p), int(c)) for p, c in samples], list(classes)


def even_subset(samples: list, cap: int) -> list:
    """``cap`` samples spread evenly over the sorted list (every class keeps its share), or all
    of them when ``cap`` is 0 or larger than the list."""
    n = len(samples)
    if not cap or cap >= n:
        return samples
    return [samples[(i * n) // cap] for i in range(cap)]
