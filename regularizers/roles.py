"""Which weights a regularizer sees, and their roles ("first", "hidden", "output").

Contract (docs/internals.md): a model may carry ``model.weight_roles`` (parameter name ->
role); otherwise :func:`infer_roles` finds every conv/linear weight and guesses the roles;
``roles=`` passed by the caller overrides either, entry by entry ("none" drops a weight).
A weight's neurons are ``weight.reshape(weight.shape[0], -1)`` (rows = output units).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

__all__ = ["ROLES", "infer_roles", "resolve_roles", "neurons"]

ROLES = ("first", "hidden", "output")
_WEIGHT_MODULES = (nn.Linear, nn.modules.conv._ConvNd)


def neurons(weight: torch.Tensor) -> torch.Tensor:
    """(N, ...) weight -> (N, d) neuron matrix, rows are output units (a view when contiguous)."""
    return weight.reshape(weight.shape[0], -1)


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv/linear modules with a weight of ndim >= 2, in registration order (shared ones once)."""
    seen, out = set(), []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, _WEIGHT_MODULES) and isinstance(w, nn.Parameter) and w.ndim >= 2:
            if id(w) not in seen:
                seen.add(id(w))
                out.append((name, mod))
    return out


def _forward_order(model: nn.Module, mods: list[tuple[str, nn.Module]], example_input: Any):
    """Module names in the order of their first call during one eval-mode forward pass."""
    order: list[str] = []
    hooks = []
    for name, mod in mods:
        def hook(_m, _i, _o, name=name):
            if name not in order:
                order.append(name)
        hooks.append(mod.register_forward_hook(hook))
    # eval mode so BN running statistics and dropout are untouched; restore each flag afterwards.
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    # layers never called keep registration order after the called ones
    return order + [n for n, _ in mods if n not in order]


def infer_roles(model: nn.Module, example_input: Any = None) -> dict[str, str]:
    """Guess roles for every conv/linear weight of ``model``.

    first = the first weight layer, output = the last one (the layer producing the logits),
    everything else hidden. Order is the forward order when ``example_input`` is given (one
    no-grad eval-mode pass with hooks), else module registration order. A model with a single
    weight layer gets "output". Returns {parameter name: role} in named_parameters() order.
    """
    mods = _weight_modules(model)
    if not mods:
        return {}
    names = [n for n, _ in mods]
    if example_input is not None:
        names = _forward_order(model, mods, example_input)
    roles = {n: "hidden" for n in names}
    roles[names[0]] = "first"
    roles[names[-1]] = "output"
    pname = {n: (f"{n}.weight" if n else "weight") for n in names}
    by_param = {pname[n]: r for n, r in roles.items()}
    order = [n for n, _ in model.named_parameters()]
    return {n: by_param[n] for n in order if n in by_param}


def resolve_roles(
    model: nn.Module, roles: dict[str, str] | None = None, example_input: Any = None
) -> list[tuple[str, nn.Parameter, str]]:
    """The weights a regularizer acts on: [(param name, parameter, role)] in named_parameters order.

    Base mapping: ``model.weight_roles`` if present, else :func:`infer_roles`. ``roles``
    overrides entries (role "none" removes a weight). Raises ValueError on unknown names/roles.
    """
    params = dict(model.named_parameters())
    base = getattr(model, "weight_roles", None)
    mapping = dict(base) if base is not None else infer_roles(model, example_input)
    for src, extra in (("model.weight_roles", base or {}), ("roles", roles or {})):
        for name, role in extra.items():
            if name not in params:
                raise ValueError(f"{src} names unknown parameter {name!r}{_hint(name, params)}")
            if role not in ROLES and not (src == "roles" and role in (None, "none")):
                allowed = ", ".join(ROLES) + (", 'none'" if src == "roles" else "")
                raise ValueError(f"{src}[{name!r}] = {role!r}; allowed roles: {allowed}")
    for name, role in (roles or {}).items():
        if role in (None, "none"):
            mapping.pop(name, None)
        else:
            mapping[name] = role
    out = []
    for name, p in params.items():
        if name in mapping:
            if p.ndim < 2:
                raise ValueError(f"parameter {name!r} has shape {tuple(p.shape)}; roles need ndim >= 2")
            out.append((name, p, mapping[name]))
    return out
