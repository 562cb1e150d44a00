"""Which weights a regularizer sees, and their roles ("first", "hidden", "output").

Contract (docs/internals.md): a model may carry ``model.weight_roles`` (parameter name ->
role); otherwise :func:`infer_roles` finds every conv/linear weight and guesses the roles;
``roles=`` passed by the caller overrides either, entry by entry ("none" drops a weight).
A model may also tag a weight with a role of :data:`SKIPPED_ROLES` ("transform": a weight of an
auxiliary sub-network such as PointNet's T-Nets): it is a conv/linear weight of the model, but
no regularizer acts on it unless ``roles=`` maps it to one of :data:`ROLES`.
A weight's neurons are ``weight.reshape(weight.shape[0], -1)`` (rows = output units).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hints import hint

__all__ = ["ROLES", "SKIPPED_ROLES", "infer_roles", "resolve_roles", "neurons", "weight_names"]

ROLES = ("first", "hidden", "output")
#: Roles a model may tag that no regularizer acts on by default (resolve_roles drops them).
SKIPPED_ROLES = ("transform",)
_WEIGHT_MODULES = (nn.Linear, nn.modules.conv._ConvNd)


def neurons(weight: torch.Tensor) -> torch.Tensor:
    """(N, ...) weight -> (N, d) neuron matrix, rows are output units (a view when contiguous)."""
    return weight.reshape(weight.shape[0], -1)


def weight_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the weights of every conv and linear layer, in
    ``named_parameters`` order: the tensors whose rows are neurons.

    ``nn.MultiheadAttention`` keeps its q/k/v projections as raw tensors (``in_proj_weight`` or
    ``q/k/v_proj_weight``): they are neurons too. Other tensors with ndim >= 2 (position
    embeddings, class tokens, relative-position bias tables) are not, and are left out.
    """
    return [name for name, _ in _weight_owners(model)]


def _weight_owners(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(parameter name, owning module) of every neuron weight, in named_parameters order."""
    # named_parameters drops shared tensors after their first name; only keep names it yields.
    params = {id(p): n for n, p in model.named_parameters()}
    owners = []
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, _WEIGHT_MODULES):
            attrs = ["weight"]
        elif isinstance(mod, nn.MultiheadAttention):
            attrs = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
        else:
            continue
        for attr in attrs:
            p = getattr(mod, attr, None)
            if isinstance(p, nn.Parameter) and p.ndim >= 2 and params.get(id(p)) == prefix + attr:
                owners.append((prefix + attr, mod))
    order = {n: i for i, n in enumerate(params.values())}
    return sorted(owners, key=lambda o: order[o[0]])


def _forward_order(model: nn.Module, owners: list[tuple[str, nn.Module]], example_input: Any):
    """Weight names in the order their modules are first called during one eval-mode forward."""
    order: list[str] = []
    hooks = []
    for name, mod in owners:
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
    # weights whose module was never called keep their order after the called ones
    return order + [n for n, _ in owners if n not in order]


def infer_roles(model: nn.Module, example_input: Any = None) -> dict[str, str]:
    """Guess roles for every conv/linear weight of ``model``.

    first = the first weight layer, output = the last one (the layer producing the logits),
    everything else hidden. Order is the forward order when ``example_input`` is given (one
    no-grad eval-mode pass with hooks), else ``named_parameters`` order. A model with a single
    weight layer gets "output". Returns {parameter name: role} in named_parameters() order.
    """
    owners = _weight_owners(model)
    if not owners:
        return {}
    names = [n for n, _ in owners]
    if example_input is not None:
        names = _forward_order(model, owners, example_input)
    roles = {n: "hidden" for n in names}
    roles[names[0]] = "first"
    roles[names[-1]] = "output"
    return {n: roles[n] for n, _ in owners}


def resolve_roles(
    model: nn.Module, roles: dict[str, str] | None = None, example_input: Any = None
) -> list[tuple[str, nn.Parameter, str]]:
    """The weights a regularizer acts on: [(param name, parameter, role)] in named_parameters order.

    Base mapping: ``model.weight_roles`` if present, else :func:`infer_roles`. ``roles``
    overrides entries (role "none" removes a weight). A weight whose final role is one of
    :data:`SKIPPED_ROLES` ("transform") is left out too. Raises ValueError on unknown names/roles.
    """
    params = dict(model.named_parameters())
    base = getattr(model, "weight_roles", None)
    mapping = dict(base) if base is not None else infer_roles(model, example_input)
    for src, extra in (("model.weight_roles", base or {}), ("roles", roles or {})):
        for name, role in extra.items():
            if name not in params:
                raise ValueError(f"{src} names unknown parameter {name!r}{hint(name, params)}")
            if role not in ROLES + SKIPPED_ROLES and not (src == "roles" and role in (None, "none")):
                allowed = ", ".join(ROLES + SKIPPED_ROLES) + (", 'none'" if src == "roles" else "")
                raise ValueError(f"{src}[{name!r}] = {role!r}; allowed roles: {allowed}")
    for name, role in (roles or {}).items():
        if role in (None, "none") or role in SKIPPED_ROLES:
            mapping.pop(name, None)
        else:
            mapping[name] = role
    out = []
    for name, p in params.items():
        if name in mapping and mapping[name] not in SKIPPED_ROLES:
            if p.ndim < 2:
                raise ValueError(f"parameter {name!r} has shape {tuple(p.shape)}; roles need ndim >= 2")
            out.append((name, p, mapping[name]))
    return out
