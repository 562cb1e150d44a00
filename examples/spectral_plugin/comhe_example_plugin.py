"""Example CoMHE-Bench plugin: one third-party regularizer, ``cosine_spread``.

penalty = strength * sum over layers l (all but the classifier) of
          mean_{i != j} cos^2(w_i, w_j)          (w_i: the neurons, rows of the l-th weight)

i.e. the mean squared off-diagonal entry of each layer's cosine-similarity matrix: 0 when the
neurons are pairwise orthogonal, 1 when they are all (anti-)parallel. A layer with one neuron
contributes 0.

Use it without installing anything::

    python -m benchmark --plugin examples/spectral_plugin/comhe_example_plugin.py list regularizers

or install this directory (``pip install examples/spectral_plugin``): its pyproject declares the
entry point ``comhe_bench.regularizers: cosine_spread = comhe_example_plugin:CosineSpread``, so
``regularizers.available()`` lists it with no ``--plugin`` at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from regularizers import HParam, Regularizer, register

__all__ = ["CosineSpread", "cosine_spread_terms"]


def cosine_spread_terms(W: Tensor) -> Tensor:
    """Mean squared off-diagonal cosine of each neuron matrix: (..., N, d) -> (...)."""
    N = W.shape[-2]
    if N < 2:
        return W.new_zeros(W.shape[:-2])
    U = F.normalize(W, dim=-1)                       # unit-norm neurons
    C = U @ U.transpose(-1, -2)                      # (..., N, N) cosine similarities
    off = C.square().sum((-2, -1)) - torch.diagonal(C, dim1=-2, dim2=-1).square().sum(-1)
    return off / (N * (N - 1))


@register
class CosineSpread(Regularizer):
    """Pushes the neurons of every non-classifier layer apart in angle (squared cosines)."""

    name = "cosine_spread"
    HPARAMS = {"strength": HParam(1.0, "float", 0.0, "weight of the summed per-layer term")}

    def setup(self, device) -> None:
        # layers of equal shape are stacked and served by one batched call; the classifier is skipped
        keys = [None if role == "output" else "spread" for _, _, role in self.layers]
        self._groups = self.group_layers(keys)

    def penalty(self) -> Tensor:
        self.require_attached()
        total = self.zero()
        for index in self._groups:
            total = total + cosine_spread_terms(self.stack(index)).sum()
        return self.hparams["strength"] * total
