"""Model registry: ``register`` a builder, ``create`` a model by name, list what is ``available``.

The pattern is timm's (``register_model`` / ``create_model`` / ``list_models``). Every model that
``create`` returns carries two attributes the rest of the suite relies on:

- ``model.weight_roles``: ``{parameter name: "first" | "hidden" | "output"}`` for the weight of
  every conv/linear layer (see ``docs/internals.md``, "Parameter roles"). Regularizers select
  weights by role without knowing the architecture.
- ``model.model_notes``: one-line notes the training engine copies into the run record
  (e.g. that a timm stem could not be adapted to 32x32 inputs).

Names of the form ``"timm:<timm model name>"`` build any timm architecture (never with pretrained
weights); see ``models.timm_models``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

from models.builders import check_roles
from regularizers.hints import hint

TIMM_PREFIX = "timm:"

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model builder ``fn(num_classes, in_chans=3, **kw) -> nn.Module``.

    Use as ``@register`` or ``@register(name="other_name")``. The builder must set
    ``model.weight_roles`` (``weight_roles_from`` helps); ``create`` checks it.
    """

    def _add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key.startswith(TIMM_PREFIX):
            raise ValueError(f"model name {key!r} may not start with {TIMM_PREFIX!r}: "
                             "that prefix is reserved for timm models")
        if key in _BUILDERS and _BUILDERS[key] is not builder:
            raise ValueError(f"model {key!r} is already registered "
                             f"(by {_BUILDERS[key].__module__}); pick another name")
        _BUILDERS[key] = builder
        return builder

    return _add(fn) if fn is not None else _add


def available(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``.

    timm models are not listed (there are >1000): any ``"timm:" + name`` with ``name`` in
    ``timm.list_models()`` can be created.
    """
    return sorted(n for n in _BUILDERS if fnmatch.fnmatchcase(n, pattern))


def describe(name: str) -> dict[str, object]:
    """``{"description": first docstring line, "kwargs": {keyword: default}}`` of a registered
    model's builder (for ``python -m benchmark list --verbose``)."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}{_suggest(name, available())}")
    doc = (inspect.getdoc(builder) or "").strip().splitlines()
    kwargs = {k: p.default for k, p in inspect.signature(builder).parameters.items()
              if k not in ("num_classes", "in_chans") and p.default is not inspect.Parameter.empty}
    return {"description": doc[0] if doc else "", "kwargs": kwargs}


def create(name: str, num_classes: int, in_chans: int = 3, **kw) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes and ``in_chans`` input channels.

    Unknown names and keyword arguments fail with a one-line ``ValueError`` naming close
    matches. The result has ``weight_roles`` and ``model_notes`` attributes (module docstring).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")

    if name.startswith(TIMM_PREFIX):
        from models import timm_models  # imported lazily: timm's import costs ~1 s

        model = timm_models.create_timm(name[len(TIMM_PREFIX):], num_classes, in_chans, **kw)
    else:
        builder = _BUILDERS.get(name)
        if builder is None:
            raise ValueError(f"unknown model {name!r}{_suggest(name, available())} "
                             f"(or 'timm:<name>' for any timm model)")
        _check_kwargs(name, builder, kw)
        model = builder(num_classes=num_classes, in_chans=in_chans, **kw)

    if not hasattr(model, "model_notes"):
        model.model_notes = []
    check_roles(model, name)
    return model


def _check_kwargs(name: str, builder: Callable, kw: dict) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in ("num_classes", "in_chans")]
    for key in kw:
        if key not in accepted:
            raise ValueError(f"unknown keyword {key!r} for model {name!r}"
                             f"{_suggest(key, accepted)}")


def _suggest(word: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` when something is close, else the list of valid choices."""
    close = hint(word, choices)
    if close:
        return close
    if not choices:
        return "; it accepts no extra keywords"
    shown = ", ".join(choices[:20]) + (", ..." if len(choices) > 20 else "")
    return f"; choose from: {shown}"
