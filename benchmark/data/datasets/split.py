"""The validation split: a fixed, stratified part of the training set held out (``data.validation``).

Why fixed and not seeded by the run: a tuning stage compares methods and strengths on the
same held-out images, so the split must not move with the run seed or the method; the images
are chosen by a generator of its own (:data:`SPLIT_SEED`). Why stratified: with 10 classes and
10,000 held-out images a random draw would move each class's share by ~1 %, and a per-class
quota keeps the validation set's class balance that of the training set.

With the split on, :func:`apply` replaces the dataset's test tensors by the validation images:
nothing downstream can evaluate on the test set, because it is no longer in the dataset.
"""

from __future__ import annotations

import torch

from benchmark.config import ConfigError

# The split's own generator seed: independent of every run seed (never change it: the
# validation images of every tuning record would change with it).
SPLIT_SEED = 20261204


def validation_indices(labels: torch.Tensor, n_val: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Sorted indices of ``n_val`` training examples, stratified by class.

    labels: (N,) int. Each class c with N_c examples gets floor(n_val * N_c / N) images, and
    the remaining ones go to the classes with the largest fractional parts (ties: lower class
    first), so the quotas sum to exactly ``n_val``. Within a class the images are the first of
    a permutation drawn from ``seed``. Returns (n_val,) int64.
    """
    n = labels.shape[0]
    if not 0 < n_val < n:
        raise ConfigError(f"data.validation={n_val} must be in [1, {n - 1}] for a training set "
                          f"of {n} examples (0 = no validation split)")
    classes = torch.unique(labels)
    counts = torch.stack([(labels == c).sum() for c in classes]).double()
    exact = counts * n_val / n
    quota = exact.floor().long()
    left = n_val - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), i))
    for i in order[:left]:
        quota[i] += 1
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=g)[:q]])
    return torch.cat(chosen).sort().values


def apply(ds, n_val: int):
    """Hold ``n_val`` images out of ``ds``'s training set: train on the rest (in their original
    order), ``test_x/test_y`` become the validation images and the test set is dropped.
    Sets ``ds.split = "validation"``. Returns ``ds``."""
    val = validation_indices(ds.train_y, n_val)
    keep = torch.ones(ds.train_y.shape[0], dtype=torch.bool)
    keep[val] = False
    ds.test_x, ds.test_y = ds.train_x[val], ds.train_y[val]
    ds.train_x, ds.train_y = ds.train_x[keep], ds.train_y[keep]
    ds.split = "validation"
    return ds


def validation_names(fields: dict) -> dict:
    """A run's record fields with the evaluation named for what it measured: ``test_*`` curves
    and final metrics become ``val_*``, ``n_test`` becomes ``n_val`` and ``final_correct``
    ``final_val_correct``. Why rename rather than add a flag: a validation error read as a
    test error by any table would be a silent lie; under its own name no table picks it up."""
    def rename(d: dict) -> dict:
        return {("val_" + k[5:] if k.startswith("test_") else "n_val" if k == "n_test" else k): v
                for k, v in d.items()}

    out = dict(fields)
    out["curves"], out["final"] = rename(fields["curves"]), rename(fields["final"])
    if "final_correct" in out:
        out["final_val_correct"] = out.pop("final_correct")
    return out
