"""CNN-9: the plain CIFAR network of the MHE and CoMHE papers (docs recipe.md §4).

Nine 3x3 conv-BN-ReLU layers in three stages of three, a 4x4 "fc6" conv and a 1x1 "score" conv.
At width 1 and 100 classes: 2,992,832 conv weights and 2,688 BN parameters, no biases.
The input scaling (x - 127.5) / 128 belongs to the data pipeline, not to this module.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from models.builders import he_init, weight_roles_from
from models.registry import register

# PyTorch's momentum is the weight of the NEW batch statistic: 0.001 here equals the
# TensorFlow moving-average decay 0.999 of the released code.
_BN_EPS = 1e-3
_BN_MOMENTUM = 1e-3
_STAGE_WIDTHS = (64, 128, 256)


class _ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False),
            bn=nn.BatchNorm2d(c_out, eps=_BN_EPS, momentum=_BN_MOMENTUM),
            relu=nn.ReLU(inplace=True),
        ))


class CNN9(nn.Module):
    """CNN-9 for 32x32 inputs; ``forward`` returns logits of shape (B, num_classes)."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, width: float = 1.0):
        super().__init__()
        widths = [_scaled(c, width) for c in _STAGE_WIDTHS]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = in_chans
        for stage, c_out in enumerate(widths, start=1):
            for i in range(1, 4):
                layers[f"conv{stage}_{i}"] = _ConvBNReLU(c_in, c_out)
                c_in = c_out
            layers[f"pool{stage}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        # fc6 and score are linear maps written as convs, as in the released TF graph: no BN,
        # no ReLU between them, no biases.
        self.fc6 = nn.Conv2d(c_in, c_in, 4, bias=False)
        self.score = nn.Conv2d(c_in, num_classes, 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # N(0, 2 / fan_in) for every conv, fc6 and score included (recipe §4).
        he_init(self, "fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-2:] != (4, 4):
            # Any other size would make fc6 produce a spatial map and flatten() would silently
            # return num_classes * h * w "logits".
            raise ValueError(f"cnn9 expects 32x32 inputs (4x4 before fc6), got a "
                             f"{tuple(x.shape[-2:])} map; resize or pad the images to 32x32")
        return self.score(self.fc6(x)).flatten(1)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


@register
def cnn9(num_classes: int, in_chans: int = 3, width: float = 1.0) -> CNN9:
    """The paper's CNN-9; ``width`` scales every channel count (e.g. 0.25 for CPU suites)."""
    if not width > 0:
        raise ValueError(f"cnn9 width must be > 0, got {width!r}")
    model = CNN9(num_classes=num_classes, in_chans=in_chans, width=width)
    model.weight_roles = weight_roles_from(model, first="features.conv1_1.conv.weight",
                                           output="score.weight")
    return model
