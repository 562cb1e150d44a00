"""CIFAR ResNets: He et al. 2016 (``resnet20/32/56/110``) and two common CIFAR variants.

- ``resnet20/32/56/110`` ("Deep Residual Learning for Image Recognition", §4.2): a 3x3 stem with
  16 channels, three stages of n basic blocks (16/32/64 channels, n = 3/5/9/18), option-A
  shortcuts (identity; at a stage change, stride-2 subsampling and zero-padded channels), global
  average pooling and a linear classifier. 0.27M / 0.46M / 0.85M / 1.7M parameters.
- ``resnet18``: torchvision's ResNet-18 stages (64..512, projection shortcuts) with the usual
  CIFAR stem: one 3x3 stride-1 conv, no max-pool. About 11.17M parameters at 10 classes.
- ``wrn28_10``: Zagoruyko & Komodakis's WRN-28-10 (pre-activation wide basic blocks, widths
  160/320/640, 1x1 projection shortcuts on width changes, optional dropout between the convs).
  About 36.5M parameters at 10 classes.

Initialisation: He (Kaiming) normal on conv weights with fan_out, as in torchvision and the WRN
reference code; BN gamma 1 / beta 0; PyTorch's default init for the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.builders import he_init, weight_roles_from
from models.registry import register


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_lo = (c_out - c_in) // 2
        self.pad_hi = c_out - c_in - self.pad_lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class _BasicBlock(nn.Module):
    """Post-activation basic block; ``projection`` picks a 1x1 conv + BN shortcut over option A."""

    def __init__(self, c_in: int, c_out: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif projection:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        else:
            self.shortcut = _PadShortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv twice, dropout between the convs)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(c_out, c_out)
        self.shortcut = (None if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # The projection sees the pre-activated input, as in the reference implementation.
        return out + (x if self.shortcut is None else self.shortcut(act))


class CifarResNet(nn.Module):
    """Stem conv, stages of blocks, global average pooling, linear classifier.

    ``block`` is ``"basic_a"`` (option-A shortcuts), ``"basic_b"`` (projection shortcuts) or
    ``"wide"`` (pre-activation). ``stage_blocks`` and ``stage_widths`` have one entry per stage;
    every stage after the first halves the resolution.
    """

    def __init__(self, block: str, stage_blocks: Sequence[int], stage_widths: Sequence[int],
                 stem_width: int, num_classes: int, in_chans: int = 3, dropout: float = 0.0):
        super().__init__()
        self.preact = block == "wide"
        self.conv1 = _conv3x3(in_chans, stem_width)
        # Pre-activation nets normalise inside the blocks and once more before pooling instead.
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(stem_width)
        c_in = stem_width
        stages = []
        for i, (n, c_out) in enumerate(zip(stage_blocks, stage_widths)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                if block == "wide":
                    blocks.append(_WideBlock(c_in, c_out, stride, dropout))
                else:
                    blocks.append(_BasicBlock(c_in, c_out, stride, projection=block == "basic_b"))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn_final = nn.BatchNorm2d(c_in) if self.preact else nn.Identity()
        self.fc = nn.Linear(c_in, num_classes)
        he_init(self, "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = F.relu(self.bn1(x))
        x = self.layers(x)
        if self.preact:
            x = F.relu(self.bn_final(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _with_roles(model: CifarResNet) -> CifarResNet:
    model.weight_roles = weight_roles_from(model, first="conv1.weight", output="fc.weight")
    return model


def _he_resnet(depth: int, num_classes: int, in_chans: int) -> CifarResNet:
    n = (depth - 2) // 6  # 6n + 2 layers: stem, 3 stages x n blocks x 2 convs, classifier
    return _with_roles(CifarResNet("basic_a", (n, n, n), (16, 32, 64), 16, num_classes, in_chans))


@register
def resnet20(num_classes: int, in_chans: int = 3) -> CifarResNet:
    """He et al. 2016 CIFAR ResNet-20 (option A, 0.27M parameters)."""
    return _he_resnet(20, num_classes, in_chans)


@register
def resnet32(num_classes: int, in_chans: int = 3) -> CifarResNet:
    """He et al. 2016 CIFAR ResNet-32 (option A, 0.46M parameters)."""
    return _he_resnet(32, num_classes, in_chans)


@register
def resnet56(num_classes: int, in_chans: int = 3) -> CifarResNet:
    """He et al. 2016 CIFAR ResNet-56 (option A, 0.85M parameters)."""
    return _he_resnet(56, num_classes, in_chans)


@register
def resnet110(num_classes: int, in_chans: int = 3) -> CifarResNet:
    """He et al. 2016 CIFAR ResNet-110 (option A, 1.7M parameters)."""
    return _he_resnet(110, num_classes, in_chans)


@register
def resnet18(num_classes: int, in_chans: int = 3) -> CifarResNet:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (about 11.17M parameters)."""
    return _with_roles(CifarResNet("basic_b", (2, 2, 2, 2), (64, 128, 256, 512), 64,
                                   num_classes, in_chans))


@register
def wrn28_10(num_classes: int, in_chans: int = 3, dropout: float = 0.0) -> CifarResNet:
    """Wide ResNet 28-10 (about 36.5M parameters); ``dropout`` between the block convs."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"wrn28_10 dropout must be in [0, 1), got {dropout!r}")
    n = (28 - 4) // 6
    return _with_roles(CifarResNet("wide", (n, n, n), (160, 320, 640), 16, num_classes,
                                   in_chans, dropout=dropout))
