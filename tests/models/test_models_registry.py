"""Registry behaviour: names, keyword validation, one-line errors, the roles contract."""

import pytest
import torch
from torch import nn

import models
from regularizers.roles import weight_names

OUR_MODELS = ["cnn9", "resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "wrn28_10",
              "pointnet", "pointnet_vanilla"]


def test_available_lists_every_family():
    assert models.available() == sorted(OUR_MODELS)
    assert models.available("resnet*") == ["resnet110", "resnet18", "resnet20", "resnet32",
                                           "resnet56"]


@pytest.mark.parametrize("name, kw, expected", [
    ("resnet21", {}, "'resnet20'"),
    ("cnn_9", {}, "'cnn9'"),
    ("cnn9", {"widht": 0.5}, "did you mean 'width'"),
    ("wrn28_10", {"drop_out": 0.3}, "did you mean 'dropout'"),
    ("resnet20", {"cifar_stem": True}, "unknown keyword 'cifar_stem'"),
    ("timm:resnet81", {}, "'timm:resnet18'"),
    ("timm:resnet18", {"drop_rat": 0.1}, "did you mean 'drop_rate'"),
    ("timm:resnet18", {"pretrained": True}, "nothing may be downloaded"),
    ("timm:resnet18", {"cifar_stem": "yes"}, "cifar_stem must be True or False"),
])
def test_bad_name_or_keyword_fails_in_one_line(name, kw, expected):
    with pytest.raises(ValueError) as info:
        models.create(name, num_classes=10, **kw)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet20", num_classes=num_classes)


def test_register_adds_a_model_and_checks_its_roles():
    class Tiny(nn.Module):
        def __init__(self, num_classes, in_chans):
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 4, 3)
            self.mid = nn.Conv2d(4, 4, 3)
            self.head = nn.Linear(4, num_classes)

    @models.register(name="_test_tiny")
    def _tiny(num_classes, in_chans=3):
        model = Tiny(num_classes, in_chans)
        model.weight_roles = {"stem.weight": "first", "head.weight": "output"}  # misses mid
        return model

    try:
        assert "_test_tiny" in models.available()
        with pytest.raises(ValueError, match="untagged: \\['mid.weight'\\]"):
            models.create("_test_tiny", num_classes=3)
        with pytest.raises(ValueError, match="already registered"):
            models.register(name="_test_tiny")(lambda num_classes, in_chans=3: None)
    finally:
        from models import registry
        registry._BUILDERS.pop("_test_tiny", None)


def test_timm_prefix_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        models.register(name="timm:mine")(lambda num_classes, in_chans=3: None)


def test_weight_names_skips_embeddings_and_covers_attention():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 2)

    names = weight_names(Odd())
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"]
    # One walker: the roles a regularizer infers cover exactly the same weights (they used to
    # disagree on MultiheadAttention's raw q/k/v tensor).
    from regularizers import infer_roles

    roles = infer_roles(Odd())
    assert list(roles) == names
    assert roles == {"attn.in_proj_weight": "first", "attn.out_proj.weight": "hidden", "fc.weight": "output"}
