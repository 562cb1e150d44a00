"""``"timm:<name>"``: any timm architecture, randomly initialised, with an optional CIFAR stem.

timm's ImageNet stems downsample by 4 before the first stage (7x7 stride-2 conv + stride-2
max-pool on a ResNet), so a 32x32 image reaches the first stage as 8x8. On CIFAR-100 that costs
a ResNet-18 about 16 points of accuracy against a CIFAR stem (timm issue #2481). With
``cifar_stem=True`` (the default here, because 32x32 inputs are this suite's use case) the stem
conv becomes a 3x3 stride-1 conv with the same output channels and the stem pooling becomes an
``Identity``, for the families that allow it:

- ResNet-like models with ``conv1`` and ``maxpool`` attributes (timm resnet*, resnext*,
  seresnet*, ecaresnet*, resnest*, res2net*, the "d" deep-stem variants, ...);
- EfficientNet-like models with a ``conv_stem`` attribute and no stem pooling (efficientnet*,
  mobilenetv2/v3*, mixnet*, mnasnet*, ...).

Any other family (ViT, ConvNeXt, RegNet, DenseNet, ...) keeps its stem: ``create`` does not fail,
it records a one-line note in ``model.model_notes`` and emits the same line as a warning.
Pretrained weights are never loaded: nothing may be downloaded.
"""

from __future__ import annotations

import inspect
import sys
import warnings

import timm
from timm.models import model_entrypoint
from torch import nn

from models.builders import weight_roles_from
from regularizers.hints import hint
from regularizers.roles import weight_names


def create_timm(name: str, num_classes: int, in_chans: int = 3, *, cifar_stem: bool = True,
                **kw) -> nn.Module:
    """Build timm model ``name`` with ``pretrained=False``; see the module docstring."""
    if not timm.is_model(name):
        close = hint(f"timm:{name}", [f"timm:{m}" for m in timm.list_models()], cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r}"
                         f"{close or '; see timm.list_models() for the names'}")
    if type(cifar_stem) is not bool:  # a ValueError, like every other bad argument here
        raise ValueError(f"cifar_stem must be True or False, got {cifar_stem!r}")
    if kw.get("pretrained"):
        raise ValueError("pretrained weights are not supported: nothing may be downloaded, "
                         "and the benchmark trains from scratch")
    kw.pop("pretrained", None)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                  in_chans=in_chans, **kw)
    except TypeError as err:
        raise ValueError(_kwarg_error(name, kw, err)) from None

    notes: list[str] = []
    first = None
    if cifar_stem:
        first, note = _adapt_stem(model, name)
        notes.append(note)
        if first is None:
            warnings.warn(note, stacklevel=3)
    model.weight_roles = _timm_roles(model, name, first, notes)
    model.model_notes = notes
    return model


def _adapt_stem(model: nn.Module, name: str) -> tuple[str | None, str]:
    """Swap the stem for a CIFAR one in place; returns (new first-conv weight name, note).

    The name is None when the family's stem cannot be swapped; the note then says so.
    """
    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if isinstance(conv1, nn.Module) and isinstance(maxpool, nn.Module):
        old = _last_conv(conv1)
        if old is not None:
            was = _describe(conv1)
            model.conv1 = _cifar_conv(_first_in(conv1), old.out_channels, bias=False)
            model.maxpool = nn.Identity()
            return "conv1.weight", (f"timm:{name} cifar_stem: stem {was} + max-pool replaced by "
                                    "a 3x3 stride-1 conv and no pooling")
    conv_stem = getattr(model, "conv_stem", None)
    if isinstance(conv_stem, nn.Conv2d):
        was = _describe(conv_stem)
        model.conv_stem = _cifar_conv(conv_stem.in_channels, conv_stem.out_channels,
                                      bias=conv_stem.bias is not None)
        return "conv_stem.weight", (f"timm:{name} cifar_stem: stem {was} replaced by a 3x3 "
                                    "stride-1 conv")
    family = type(model).__module__.rsplit(".", 1)[-1]
    first = _cfg(model).get("first_conv") or "?"
    return None, (f"cifar_stem not supported for timm family {family} (timm:{name}): kept the "
                  f"timm stem ({first}); 32x32 inputs are downsampled by it")


def _cifar_conv(c_in: int, c_out: int, bias: bool) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=bias)
    # fan_out He init: what timm's ResNet and EfficientNet initialisers give their stem convs.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _last_conv(module: nn.Module) -> nn.Conv2d | None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _first_in(module: nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels


def _describe(stem: nn.Module) -> str:
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) == 1:
        (k, _), (s, _) = convs[0].kernel_size, convs[0].stride
        return f"{k}x{k} stride-{s} conv"
    return f"{len(convs)}-conv deep stem"


def _cfg(model: nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return dict(cfg or {})


def _as_list(value) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _timm_roles(model: nn.Module, name: str, first: str | None, notes: list[str]
                ) -> dict[str, str]:
    """Roles from timm's metadata: ``first_conv`` and ``classifier`` of the pretrained config."""
    weights = weight_names(model)
    cfg = _cfg(model)
    firsts = [first] if first else [f"{n}.weight" for n in _as_list(cfg.get("first_conv"))]
    outputs = [f"{n}.weight" for n in _as_list(cfg.get("classifier"))]
    firsts = [n for n in firsts if n in weights]
    outputs = [n for n in outputs if n in weights]
    if not outputs:
        # Metadata missing or stale: ask the model itself for its classifier module.
        heads = model.get_classifier() if hasattr(model, "get_classifier") else ()
        heads = heads if isinstance(heads, tuple) else (heads,)
        by_id = {id(m): n for n, m in model.named_modules()}
        outputs = [f"{by_id[id(h)]}.weight" for h in heads
                   if id(h) in by_id and f"{by_id[id(h)]}.weight" in weights]
    if not firsts and weights:
        firsts = [weights[0]]
        notes.append(f"timm:{name}: no first_conv metadata; tagged {weights[0]} as first")
    if not outputs:
        notes.append(f"timm:{name}: no classifier found; no weight is tagged output")
    return weight_roles_from(model, first=firsts, output=outputs)


def _kwarg_error(name: str, kw: dict, err: TypeError) -> str:
    """One line for a keyword timm's model rejected, naming close matches when there are any."""
    msg = str(err).splitlines()[0]
    bad = [k for k in kw if f"'{k}'" in msg]
    if not bad:
        return f"timm:{name}: {msg}"
    accepted = _accepted_kwargs(name) | {"cifar_stem", "drop_rate", "drop_path_rate"}
    return f"unknown keyword {bad[0]!r} for model 'timm:{name}'{hint(bad[0], sorted(accepted))}"


def _accepted_kwargs(name: str) -> set[str]:
    """Constructor keywords of the nn.Module classes defined in the model's timm module."""
    module = sys.modules.get(model_entrypoint(name).__module__)
    names: set[str] = set()
    for obj in vars(module).values() if module else ():
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
            try:
                names.update(inspect.signature(obj.__init__).parameters)
            except (TypeError, ValueError):
                continue
    names.discard("self")
    return names
