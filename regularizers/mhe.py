"""MHE and half-space MHE (Liu et al., NeurIPS 2018); energies and layer treatment as in the
released code (github.com/wy1iu/MHE, ``code/architecture.py``: ``_add_thomson_constraint`` for
the first and hidden layers, ``_add_thomson_constraint_final`` for the classifier).

penalty = strength * sum_{first, hidden layers} E_s(W_l)  +  output_strength * E_s^full(W_out)

E_s is :func:`regularizers.energy.hyperspherical_energy` with power ``power``; first and hidden
layers use half-space when ``half_space`` is True (``hs_mhe``; the code's ``half_mhe``), the
output (classifier) layer is ALWAYS full-space.

Strengths, two named settings (``strengths``), resolved per power and space
(:func:`default_strengths`); ``strength`` / ``output_strength`` given explicitly override them:

* ``"code"`` (default): the constants of ``architecture.py``: hidden 1 and output 10, or 0.1 and 1
  for the angular powers a1 and a2.
* ``"logs"``: the strengths the authors' published training logs (``log/<model>_<s>/``) were
  made with. Full space: 1/10 of the code, hidden 0.1 and output 1, or 0.01 and 0.1 for a1 and a2
  (the logged ``thom`` / ``thomf`` at the first logged iteration, 100, divided by the unweighted
  energies; recipe.md §2). Half space: the code's values (its logs match them).

Defaults that are THIS PROJECT's choice: ``power`` 2. The MHE code's own default is
``--power_s 0`` (full space, ``--model_name mhe``); we default to s = 2 because every CoMHE
variant uses the s = 2 energy (released CoMHE code), so ``mhe`` / ``hs_mhe`` at s = 2 are the
like-for-like baselines of the CoMHE rows. Pass ``power=0`` for the MHE code's default.
"""

from __future__ import annotations

from torch import Tensor

from .base import HParam, Regularizer
from .energy import hyperspherical_energy, parse_power
from .registry import register

__all__ = ["MHE", "HalfSpaceMHE", "default_strengths", "STRENGTH_SETTINGS"]

#: The named strength settings of ``mhe`` / ``hs_mhe`` (see the module docstring).
STRENGTH_SETTINGS = ("code", "logs")


def default_strengths(power, setting: str = "code", half_space: bool = False) -> tuple[float, float]:
    """(hidden strength, output strength) of a named setting for a power and space.

    "code": the released ``architecture.py`` constants, 1 / 10 (0.1 / 1 for a1, a2), either space.
    "logs": what the published logs used: full space 0.1 / 1 (0.01 / 0.1 for a1, a2); half space
    the code's values.
    """
    if setting not in STRENGTH_SETTINGS:
        raise ValueError(f"strengths must be one of {', '.join(map(repr, STRENGTH_SETTINGS))}; "
                         f"got {setting!r}")
    hidden, output = (0.1, 1.0) if parse_power(power) in ("a1", "a2") else (1.0, 10.0)
    if setting == "logs" and not half_space:
        hidden, output = hidden / 10, output / 10
    return hidden, output


class _MHEBase(Regularizer):
    HPARAMS = {
        "power": HParam(2, "power", doc="s in 0, 1, 2, a0, a1, a2 (2: this project's default; "
                        "the MHE code's is 0)"),
        "half_space": HParam(False, "bool", doc="half-space energy on first/hidden layers"),
        "strengths": HParam("code", "choice", doc="named strength setting: 'code' (architecture.py "
                            "constants) or 'logs' (what the published logs used)",
                            choices=STRENGTH_SETTINGS),
        "strength": HParam(None, "float", 0.0, "hidden weight; default from `strengths`"),
        "output_strength": HParam(None, "float", 0.0, "classifier weight; default from `strengths`"),
    }

    @classmethod
    def resolve_defaults(cls, hp):
        hidden, output = default_strengths(hp["power"], hp["strengths"], hp["half_space"])
        if hp["strength"] is None:
            hp["strength"] = hidden
        if hp["output_strength"] is None:
            hp["output_strength"] = output
        return hp

    def setup(self, device) -> None:
        keys = ["output" if role == "output" else "hidden" for _, _, role in self.layers]
        self._groups = self.group_layers(keys)
        self._is_output = [self.layers[g[0]][2] == "output" for g in self._groups]

    def penalty(self) -> Tensor:
        self.require_attached()
        hp = self.hparams
        total = self.zero()
        for index, is_out in zip(self._groups, self._is_output):
            half = hp["half_space"] and not is_out
            energy = hyperspherical_energy(self.stack(index), hp["power"], half).sum()
            total = total + (hp["output_strength"] if is_out else hp["strength"]) * energy
        return total


@register
class MHE(_MHEBase):
    """Full-space MHE on every layer (the MHE code's ``--model_name mhe``)."""

    name = "mhe"


@register
class HalfSpaceMHE(_MHEBase):
    """Half-space MHE on first/hidden layers, full-space on the classifier (``half_mhe``)."""

    name = "hs_mhe"
    HPARAMS = {**_MHEBase.HPARAMS, "half_space": HParam(True, "bool", doc="half-space on hidden layers")}
