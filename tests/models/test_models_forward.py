"""Forward + backward at 32x32, roles for every model, timm stems, cnn9 details."""

import functools
import warnings

import pytest
import torch
from torch import nn

import models
from regularizers.roles import weight_names

# (name, kwargs, batch): the heavy nets run one image, which keeps the folder fast on 2 cores.
CASES = [
    ("cnn9", {}, 2), ("resnet20", {}, 2), ("resnet32", {}, 2), ("resnet56", {}, 2),
    ("resnet110", {}, 1), ("resnet18", {}, 2), ("wrn28_10", {"dropout": 0.3}, 1),
    ("timm:resnet18", {}, 2), ("timm:resnet18", {"cifar_stem": False}, 2),
    ("timm:mobilenetv3_small_050", {}, 2),
    ("timm:vit_tiny_patch16_224", {"img_size": 32}, 2),
]
IDS = [f"{n}{'-' + '-'.join(f'{k}={v}' for k, v in kw.items()) if kw else ''}"
       for n, kw, _ in CASES]


@functools.cache
def _build(name, kw_items):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ViT's note is tested on its own below
        return models.create(name, num_classes=10, **dict(kw_items))


# point-cloud models take (B, P, 3) points, not images: tests/models/test_pointnet.py
POINT_MODELS = {"pointnet", "pointnet_vanilla"}


def test_every_registered_model_is_exercised():
    assert set(models.available()) - POINT_MODELS <= {name for name, _, _ in CASES}


@pytest.mark.parametrize("name, kw, batch", CASES, ids=IDS)
def test_forward_backward_32x32(name, kw, batch):
    model = _build(name, tuple(kw.items())).train()
    model.zero_grad(set_to_none=True)
    logits = model(torch.randn(batch, 3, 32, 32))
    assert logits.shape == (batch, 10)
    logits.logsumexp(1).sum().backward()
    # Every parameter takes part (a dead branch or an unused layer would show up here).
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name, kw, batch", CASES, ids=IDS)
def test_roles_one_first_one_output_rest_hidden(name, kw, batch):
    model = _build(name, tuple(kw.items()))
    roles = model.weight_roles
    assert list(roles) == weight_names(model)
    assert sorted(roles.values()).count("first") == 1
    assert sorted(roles.values()).count("output") == 1
    assert set(roles.values()) == {"first", "hidden", "output"}
    if not name.startswith("timm:vit"):  # a ViT also has position embeddings and tokens
        assert set(roles) == {n for n, p in model.named_parameters() if p.ndim >= 2}
    params = dict(model.named_parameters())
    (first,) = [n for n, r in roles.items() if r == "first"]
    (output,) = [n for n, r in roles.items() if r == "output"]
    assert params[first].shape[1] == 3  # the layer that sees the image
    assert params[output].shape[0] == 10  # the layer that produces the logits
    assert isinstance(model.model_notes, list)


def _stem_output_size(model, module, in_chans=3):
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        model.eval()(torch.randn(1, in_chans, 32, 32))
    handle.remove()
    return seen[0]


def test_timm_resnet18_cifar_stem_keeps_32x32():
    model = _build("timm:resnet18", ())
    # conv1 -> bn1 -> act1 -> maxpool is timm's stem; maxpool is its last module.
    assert isinstance(model.maxpool, nn.Identity)
    assert _stem_output_size(model, model.maxpool) == (32, 32)
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.conv1.stride == (1, 1)
    assert model.weight_roles["conv1.weight"] == "first"
    assert "cifar_stem" in model.model_notes[0]


def test_timm_resnet18_imagenet_stem_downsamples_to_8x8():
    model = _build("timm:resnet18", (("cifar_stem", False),))
    assert _stem_output_size(model, model.maxpool) == (8, 8)
    assert model.model_notes == []


def test_timm_deep_stem_roles_recomputed_after_replacement():
    model = models.create("timm:resnet18d", num_classes=10, in_chans=1)
    assert model.pretrained_cfg["first_conv"] == "conv1.0"  # timm's metadata, now stale
    assert model.weight_roles["conv1.weight"] == "first"
    assert model.conv1.weight.shape == (64, 1, 3, 3)  # out channels of the old deep stem
    assert "conv1.0.weight" not in model.weight_roles
    assert _stem_output_size(model, model.maxpool, in_chans=1) == (32, 32)


def test_timm_efficientnet_like_stem_is_stride_1():
    model = _build("timm:mobilenetv3_small_050", ())
    assert model.conv_stem.stride == (1, 1)
    assert _stem_output_size(model, model.conv_stem) == (32, 32)
    assert model.weight_roles["conv_stem.weight"] == "first"


def test_timm_vit_keeps_its_stem_with_a_note_and_a_warning():
    with pytest.warns(UserWarning, match="cifar_stem not supported") as record:
        model = models.create("timm:vit_tiny_patch16_224", num_classes=10, img_size=32)
    (note,) = model.model_notes
    assert note == str(record[0].message) and "\n" not in note
    assert "vision_transformer" in note
    assert model.patch_embed.proj.stride == (16, 16)
    assert model.weight_roles["patch_embed.proj.weight"] == "first"
    assert model.weight_roles["head.weight"] == "output"


def test_cnn9_layers_follow_the_recipe():
    model = _build("cnn9", ())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 11 and len(bns) == 9
    assert all(c.bias is None for c in convs)
    assert [c.kernel_size for c in convs] == [(3, 3)] * 9 + [(4, 4), (1, 1)]
    assert all(c.stride == (1, 1) and c.padding == (1, 1) for c in convs[:9])
    assert convs[9].padding == (0, 0)  # fc6 is a "valid" conv
    assert all(b.eps == 1e-3 and b.momentum == 1e-3 for b in bns)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3


def test_cnn9_init_is_he_fan_in_normal():
    torch.manual_seed(1)
    model = models.create("cnn9", num_classes=100)
    for name, w in model.named_parameters():
        if w.ndim < 2:
            assert torch.all(w == (1.0 if name.endswith("weight") else 0.0)), name  # BN 1 / 0
            continue
        target = 2.0 / w[0].numel()
        # The sample variance of n Gaussians has relative standard error sqrt(2/n); 5 of
        # them still separates fan_in from fan_out on every non-square layer.
        rel = (w.double().pow(2).mean().item() - target) / target
        assert abs(rel) < 5 * (2 / w.numel()) ** 0.5, name
        assert abs(w.double().mean().item()) < 5 * (target / w.numel()) ** 0.5, name


def test_cnn9_rejects_other_input_sizes():
    model = models.create("cnn9", num_classes=10, width=0.25)
    with pytest.raises(ValueError, match="expects 32x32"):
        model(torch.randn(1, 3, 64, 64))
    assert models.create("cnn9", num_classes=10, in_chans=1, width=0.25)(
        torch.randn(1, 1, 32, 32)).shape == (1, 10)
