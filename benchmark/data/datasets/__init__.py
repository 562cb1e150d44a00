"""Datasets by name: ``load("digits", protocol.data)``, ``available()``, ``@register_dataset``.

Images come as uint8 (N, C, H, W) tensors on the CPU, point clouds (kind "points") as float
(N, P, C); ``benchmark.data.images`` (images) and ``benchmark.data.points`` turn them into the
recipe's batches. A new dataset is one file here (or in a plugin) with one decorator.
"""

from benchmark.data.datasets.folders import FileDataset
from benchmark.data.datasets.registry import (
    Dataset,
    DatasetInfo,
    available,
    check_name,
    data_dir,
    download_allowed,
    info,
    load,
    offline_stand_in,
    preflight,
    register_dataset,
)

# Importing the family modules runs their @register_dataset.
from benchmark.data.datasets import cifar, digits, fashion_mnist, modelnet40, synthetic, synthetic_shapes  # noqa: E402,F401  isort: skip
from benchmark.data.datasets import imagenet  # noqa: E402,F401  isort: skip

__all__ = ["Dataset", "DatasetInfo", "FileDataset", "available", "check_name", "data_dir", "download_allowed",
           "info", "load", "offline_stand_in", "preflight", "register_dataset"]
