"""MHE and half-space MHE (Liu et al., NeurIPS 2018), as in the authors' released code.

penalty = strength * sum_{first, hidden layers} E_s(W_l)  +  output_strength * E_s^full(W_out)

E_s is :func:`regularizers.energy.hyperspherical_energy` with power ``power``; hidden layers use
half-space when ``half_space`` is True (``hs_mhe``), the output (classifier) layer is ALWAYS
full-space. Default strengths (recipe.md section 2): strength 1 and output_strength 10, or 0.1
and 1 for the angular powers a1 and a2 (the authors scaled those down). Note recipe.md's caveat:
the authors' published full-space logs used 0.1 / 1 for every power; set them explicitly for that.
"""

from __future__ import annotations

from torch import Tensor

from .base import HParam, Regularizer
from .energy import hyperspherical_energy
from .registry import register

__all__ = ["MHE", "HalfSpaceMHE", "default_strengths"]


def default_strengths(power) -> tuple[float, float]:
    """(hidden strength, output strength) the authors' code uses for a power."""
    return (0.1, 1.0) if power in ("a1", "a2") else (1.0, 10.0)


class _MHEBase(Regularizer):
    HPARAMS = {
        "power": HParam(2, "power", doc="s in 0, 1, 2, a0, a1, a2"),
        "half_space": HParam(False, "bool", doc="half-space energy on first/hidden layers"),
        "strength": HParam(None, "float", 0.0, "hidden weight; default 1 (0.1 for a1, a2)"),
        "output_strength": HParam(None, "float", 0.0, "classifier weight; default 10 (1 for a1, a2)"),
    }

    @classmethod
    def _resolve_defaults(cls, hp):
        hidden, output = default_strengths(hp["power"])
        if hp["strength"] is None:
            hp["strength"] = hidden
        if hp["output_strength"] is None:
            hp["output_strength"] = output
        return hp

    def _setup(self, device) -> None:
        keys = ["output" if role == "output" else "hidden" for _, _, role in self._layers]
        self._groups = self._group_layers(keys)
        self._is_output = [self._layers[g[0]][2] == "output" for g in self._groups]

    def penalty(self) -> Tensor:
        self._require_attached()
        hp = self.hparams
        total = self._zero()
        for index, is_out in zip(self._groups, self._is_output):
            half = hp["half_space"] and not is_out
            energy = hyperspherical_energy(self._stack(index), hp["power"], half).sum()
            total = total + (hp["output_strength"] if is_out else hp["strength"]) * energy
        return total


@register
class MHE(_MHEBase):
    """Full-space MHE on every layer."""

    name = "mhe"


@register
class HalfSpaceMHE(_MHEBase):
    """Half-space MHE on first/hidden layers, full-space on the classifier."""

    name = "hs_mhe"
    HPARAMS = {**_MHEBase.HPARAMS, "half_space": HParam(True, "bool", doc="half-space on hidden layers")}
