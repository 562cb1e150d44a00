"""Baselines: the protocol's weight decay alone, and the orthogonality regularizers of
Bansal, Chen & Wang (NeurIPS 2018), recipe.md section 7.

For a neuron matrix W (N, d) let G be the Gram matrix of the SMALLER side: W W^T (N x N) when
N <= d, else W^T W (d x d); m = min(N, d).

* SO   = ||G - I||_F^2
* DSO  = ||W W^T - I||_F^2 + ||W^T W - I||_F^2
* MC   = max_{i != j} |G_ij|                  (the largest off-diagonal entry of |G - I|)
* SRIP = sigma_max(G - I), the spectral norm, by power iteration whose vector is kept between
         steps (a buffer, checkpointed). The iterations run without gradient; the gradient flows
         through the final estimate ||(G - I) v|| with v the unit iterate, like the authors' code.
         Note G - I is symmetric, so this is the largest |eigenvalue|; no extra squaring.

Strength defaults are THIS PROJECT's choices (the authors' schedules are epoch based and not in
recipe.md): 1e-4 for so/dso/mc, 1e-2 for srip. All layers use the same strength.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import HParam, Regularizer
from .registry import register

__all__ = ["WeightDecay", "SO", "DSO", "MC", "SRIP", "small_gram", "srip_sigma"]


def small_gram(W: Tensor) -> Tensor:
    """Gram of the smaller side. W (..., N, d) -> (..., m, m), m = min(N, d)."""
    Wt = W.transpose(-1, -2)
    return W @ Wt if W.shape[-2] <= W.shape[-1] else Wt @ W


def _minus_eye(G: Tensor) -> Tensor:
    return G - torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)


def srip_sigma(A: Tensor, v: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Power-iteration estimate of the spectral norm of symmetric A (..., m, m) from v (..., m).

    Returns (sigma (...), new unit vector (..., m) detached). ``iters`` no-grad iterations, then
    sigma = ||A v|| with gradient through A only.
    """
    with torch.no_grad():
        Ad = A.detach()
        for _ in range(iters):
            v = (Ad @ v.unsqueeze(-1)).squeeze(-1)
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    sigma = (A @ v.unsqueeze(-1)).squeeze(-1).norm(dim=-1)
    return sigma, v


class _Orthogonality(Regularizer):
    HPARAMS = {"strength": HParam(1e-4, "float", 0.0, "weight of the summed per-layer term")}

    def _setup(self, device) -> None:
        # every conv/linear weight, whatever its role; one kernel call per distinct shape
        self._groups = self._group_layers(["all"] * len(self._layers))

    def _layer_terms(self, W: Tensor, gi: int) -> Tensor:  # (L, N, d) -> (L,)
        raise NotImplementedError

    def penalty(self) -> Tensor:
        self._require_attached()
        total = self._zero()
        for gi, index in enumerate(self._groups):
            total = total + self._layer_terms(self._stack(index), gi).sum()
        return self.hparams["strength"] * total


@register
class WeightDecay(Regularizer):
    """The baseline row: no extra term (the protocol's L2 weight decay does the work)."""

    name = "weight_decay"
    HPARAMS = {}

    def penalty(self) -> Tensor:
        self._require_attached()
        return self._zero()


@register
class SO(_Orthogonality):
    name = "so"

    def _layer_terms(self, W, gi):
        return _minus_eye(small_gram(W)).square().sum((-2, -1))


@register
class DSO(_Orthogonality):
    name = "dso"

    def _layer_terms(self, W, gi):
        Wt = W.transpose(-1, -2)
        return (_minus_eye(W @ Wt).square().sum((-2, -1))
                + _minus_eye(Wt @ W).square().sum((-2, -1)))


@register
class MC(_Orthogonality):
    name = "mc"

    def _layer_terms(self, W, gi):
        G = small_gram(W)
        off = 1.0 - torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)  # multiplicative mask
        return (G * off).abs().amax((-2, -1))


@register
class SRIP(_Orthogonality):
    name = "srip"
    HPARAMS = {
        "strength": HParam(1e-2, "float", 0.0, "weight of the summed per-layer term"),
        "power_iters": HParam(2, "int", 1, "power iterations per step (vector kept between steps)"),
    }

    def _setup(self, device) -> None:
        super()._setup(device)
        for gi, index in enumerate(self._groups):
            p = self._layers[index[0]][1]
            m = min(p.shape[0], p[0].numel())
            v = torch.randn(len(index), m, generator=self.generator, device=device, dtype=p.dtype)
            self.register_buffer(f"v{gi}", v / v.norm(dim=-1, keepdim=True))

    def _layer_terms(self, W, gi):
        v = getattr(self, f"v{gi}")
        sigma, v_new = srip_sigma(_minus_eye(small_gram(W)), v, self.hparams["power_iters"])
        v.copy_(v_new)  # in place: v is not saved for backward by anything that needs the old one
        return sigma
