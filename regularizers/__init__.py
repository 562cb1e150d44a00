"""Hyperspherical-energy regularizers (MHE, CoMHE) and baselines, in pure PyTorch.

See docs/regularizers.md for formulas and defaults, docs/internals.md for the contracts.
"""

from .base import HParam, Kind, Layer, Regularizer
from .energy import group_energy, hyperspherical_energy, projected_energy
from .hints import hint
from .registry import available, create, get, load_plugin, register
from .roles import infer_roles

# built-in regularizers register themselves on import
from . import comhe, mhe, orthogonality  # noqa: E402,F401  isort: skip

__all__ = [
    "hyperspherical_energy",
    "projected_energy",
    "group_energy",
    "register",
    "create",
    "available",
    "get",
    "load_plugin",
    "Regularizer",
    "HParam",
    "Kind",
    "Layer",
    "infer_roles",
    "hint",
]
