"""Helpers for model builders: roles for every weight, the recipe's He/BN init, the role check.

The role vocabulary and the weight walker belong to the regularizers that consume them
(``regularizers.roles``); models only tag their weights with it.
"""

from __future__ import annotations

from torch import nn

from regularizers.roles import ROLES, SKIPPED_ROLES, weight_names

__all__ = ["weight_roles_from", "he_init", "check_roles"]


def weight_roles_from(model: nn.Module, first: str | list[str], output: str | list[str],
                      transform: list[str] = ()) -> dict[str, str]:
    """Roles for ``model``: the named weights are first/output/transform, every other conv/linear
    hidden. "transform" (``regularizers.roles.SKIPPED_ROLES``) tags a weight that no regularizer
    acts on unless a caller's ``roles=`` maps it to a regularized role (PointNet's T-Nets)."""
    firsts = [first] if isinstance(first, str) else list(first)
    outputs = [output] if isinstance(output, str) else list(output)
    transforms = set(transform)
    names = weight_names(model)
    missing = [n for n in firsts + outputs + sorted(transforms) if n not in names]
    if missing:
        raise ValueError(f"role names {missing} are not conv/linear weights of "
                         f"{type(model).__name__}")
    roles = {}
    for n in names:
        roles[n] = ("output" if n in outputs else "first" if n in firsts
                    else "transform" if n in transforms else "hidden")
    return roles


def he_init(model: nn.Module, mode: str) -> None:
    """He-normal conv weights (``mode`` "fan_in" or "fan_out"), BatchNorm gamma 1 and beta 0, in
    module order (so a seeded model draws the same numbers)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_roles(model: nn.Module, name: str = "") -> None:
    """Fail loudly if ``model.weight_roles`` does not tag exactly the conv/linear weights."""
    roles = getattr(model, "weight_roles", None)
    if not isinstance(roles, dict):
        raise TypeError(f"model {name!r} has no weight_roles dict; its builder must set one")
    expected = weight_names(model)
    if set(roles) != set(expected):
        extra = sorted(set(roles) - set(expected))
        untagged = sorted(set(expected) - set(roles))
        raise ValueError(f"model {name!r}: weight_roles mismatch (untagged: {untagged[:3]}, "
                         f"not conv/linear weights: {extra[:3]})")
    bad = {n: r for n, r in roles.items() if r not in ROLES + SKIPPED_ROLES}
    if bad:
        raise ValueError(f"model {name!r}: roles must be one of {ROLES + SKIPPED_ROLES}, got {bad}")
