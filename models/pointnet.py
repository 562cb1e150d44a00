"""PointNet for point-cloud classification (Qi et al., CVPR 2017), as in the authors' TF code.

Sources: the paper (arXiv:1612.00593, section 4 and supplementary C) and the reference
implementation github.com/charlesq34/pointnet (``models/pointnet_cls.py``,
``models/transform_nets.py``, ``utils/tf_util.py``). Layout of ``pointnet``:

    input (B, P, 3) -> input T-Net (3x3) -> shared MLP 64-64 -> feature T-Net (64x64)
      -> shared MLP 64-128-1024 -> max pool over points -> FC 512 -> FC 256 -> FC num_classes

A shared MLP is a 1x1 convolution over points (``nn.Conv1d``, kernel 1) with bias, BatchNorm and
ReLU, as ``tf_util.conv2d(..., bn=True)``; FC 512 and 256 carry BN and ReLU; dropout with keep
probability 0.7 follows FC 512 and FC 256 (the reference code has both; the paper mentions the
one before the classifier). A T-Net is a shared MLP 64-128-1024, max pool, FC 512-256 (BN, ReLU)
and a linear map 256 -> K*K whose weight starts at zero and whose bias starts at the identity.
``pointnet_vanilla`` has no T-Nets (the same five shared layers, no transform loss) and keeps
both dropouts: it is this project's ablation of ``pointnet``, not the released
``pointnet_cls_basic.py``, which has one dropout only, after FC 256 (``dropout`` applies to both).

Roles (what a regularizer acts on), THIS PROJECT's choice: the shared MLPs and the classifier's
FC layers, as ``protocols/pointnet_modelnet40.yaml`` describes the CoMHE paper's point-cloud
experiment ("this network's shared MLPs and FC layers"; the paper's section is not available to
us, so the choice is ours). Role "first": ``mlp1``'s first conv (fan-in 3); "output": the
classifier ``fc3``; "hidden": the other shared convs and FC 512 / 256. The 12 weights of the two
T-Nets get role "transform" (``regularizers.roles.SKIPPED_ROLES``), which no regularizer acts
on. ``regularize_tnets=True`` restores the earlier roles: T-Net weights regularized too (the
input T-Net's first conv "first", the rest, the zero-initialised transform maps included,
"hidden").

The feature transform A (B, 64, 64) is pushed towards orthogonality by the auxiliary loss of
``pointnet_cls.get_loss``: ``0.001 * tf.nn.l2_loss(A A^T - I)``, where ``tf.nn.l2_loss`` is half
the sum of squares over every element, the batch included: 0.001 * sum_b ||A_b A_b^T - I||_F^2 / 2
(:func:`transform_loss`). The model offers it through the engine's auxiliary-loss hook,
``forward_with_aux`` (docs/internals.md); ``forward`` returns logits only.

Initialisation as ``tf_util``: Xavier (Glorot) uniform weights with TF's fan counts for the
[1, 3] kernel of the first layers (fan-in 3, fan-out 3 * 64), zero biases, BN gamma 1 / beta 0,
BN epsilon 1e-3 (``tf_util.batch_norm_template``). The BN momentum follows the protocol's
schedule (``bn_momentum_schedule``); 0.1 until the engine sets it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.builders import weight_roles_from
from models.registry import register
from regularizers.roles import weight_names

_BN_EPS = 1e-3
TRANSFORM_LOSS_WEIGHT = 0.001  # pointnet_cls.get_loss(reg_weight=0.001)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _xavier_uniform(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -bound, bound)


class SharedMLP(nn.Sequential):
    """1x1 convolutions over points, each with bias, BatchNorm and ReLU: (B, C, P) -> (B, C', P)."""

    def __init__(self, c_in: int, widths: list[int]):
        layers: list[nn.Module] = []
        for c_out in widths:
            layers += [nn.Conv1d(c_in, c_out, 1), nn.BatchNorm1d(c_out, eps=_BN_EPS), nn.ReLU()]
            c_in = c_out
        super().__init__(*layers)


class FC(nn.Sequential):
    """Linear with bias, BatchNorm and ReLU (``tf_util.fully_connected(..., bn=True)``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out, eps=_BN_EPS), nn.ReLU())


class TNet(nn.Module):
    """A K x K transform predicted from the points: (B, K, P) -> (B, K, K), identity at init."""

    def __init__(self, k: int, width: float):
        super().__init__()
        self.k = k
        self.mlp = SharedMLP(k, [_scaled(c, width) for c in (64, 128, 1024)])
        c = _scaled(1024, width)
        self.fc1, self.fc2 = FC(c, _scaled(512, width)), FC(_scaled(512, width), _scaled(256, width))
        self.transform = nn.Linear(_scaled(256, width), k * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x).amax(dim=2)
        z = self.transform(self.fc2(self.fc1(z)))
        return z.view(-1, self.k, self.k)


class PointNet(nn.Module):
    """PointNet classifier; ``forward`` takes points (B, P, in_chans) and returns (B, classes)."""

    def __init__(self, num_classes: int = 40, in_chans: int = 3, width: float = 1.0,
                 transforms: bool = True, dropout: float = 0.3):
        super().__init__()
        w = lambda c: _scaled(c, width)  # noqa: E731
        self.input_tnet = TNet(in_chans, width) if transforms else None
        self.mlp1 = SharedMLP(in_chans, [w(64), w(64)])
        self.feature_tnet = TNet(w(64), width) if transforms else None
        self.mlp2 = SharedMLP(w(64), [w(64), w(128), w(1024)])
        self.fc1, self.fc2 = FC(w(1024), w(512)), FC(w(512), w(256))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.fc3 = nn.Linear(w(256), num_classes)
        self.in_chans = in_chans
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                fan_in, fan_out = m.weight.shape[1], m.weight.shape[0]
                if fan_in == self.in_chans and isinstance(m, nn.Conv1d):
                    fan_out *= self.in_chans  # TF: a [1, 3] kernel over a 1-channel image
                _xavier_uniform(m.weight, fan_in, fan_out)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for tnet in (self.input_tnet, self.feature_tnet):
            if tnet is not None:  # transform_nets.py: weights 0, biases the flattened identity
                nn.init.zeros_(tnet.transform.weight)
                with torch.no_grad():
                    tnet.transform.bias.copy_(torch.eye(tnet.k).flatten())

    def forward_with_aux(self, points: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits (B, classes), {"transform": the feature-transform loss}) for points (B, P, C);
        the dict is empty without T-Nets. The engine's auxiliary-loss hook (docs/internals.md)."""
        if points.dim() != 3 or points.shape[-1] != self.in_chans:
            raise ValueError(f"pointnet expects points of shape (B, P, {self.in_chans}), "
                             f"got {tuple(points.shape)}")
        x = points
        if self.input_tnet is not None:
            x = torch.bmm(x, self.input_tnet(x.transpose(1, 2)))      # (B, P, 3) @ (B, 3, 3)
        x = self.mlp1(x.transpose(1, 2))                              # (B, 64, P)
        aux = {}
        if self.feature_tnet is not None:
            a = self.feature_tnet(x)                                  # (B, 64, 64)
            x = torch.bmm(x.transpose(1, 2), a).transpose(1, 2)       # points @ A, as TF
            aux["transform"] = TRANSFORM_LOSS_WEIGHT * transform_loss(a)
        z = self.mlp2(x).amax(dim=2)
        z = self.drop1(self.fc1(z))
        z = self.drop2(self.fc2(z))
        return self.fc3(z), aux

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(points)[0]


def transform_loss(a: torch.Tensor) -> torch.Tensor:
    """``tf.nn.l2_loss(A A^T - I)`` of ``pointnet_cls.get_loss``: half the squared Frobenius norm
    of A A^T - I, summed over the batch. a: (B, K, K) -> 0-dim."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    return 0.5 * (a @ a.transpose(1, 2) - eye).square().sum()


def _roles(model: PointNet, regularize_tnets: bool = False) -> dict[str, str]:
    """Default: T-Net weights "transform" (left alone by every regularizer); first = mlp1's
    first conv, output = the classifier, the other shared convs and FCs hidden. With
    ``regularize_tnets`` (the earlier rule): first = every layer that sees the raw coordinates
    (mlp1's first conv and the input T-Net's), every other T-Net weight hidden."""
    tnet_weights = [n for n in weight_names(model) if n.startswith(("input_tnet.", "feature_tnet."))]
    if regularize_tnets:
        firsts = ["mlp1.0.weight"] + (["input_tnet.mlp.0.weight"] if model.input_tnet is not None else [])
        return weight_roles_from(model, first=firsts, output="fc3.weight")
    return weight_roles_from(model, first="mlp1.0.weight", output="fc3.weight", transform=tnet_weights)


def _check(width: float, dropout: float) -> None:
    if not width > 0:
        raise ValueError(f"pointnet width must be > 0, got {width!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"pointnet dropout must be in [0, 1), got {dropout!r}")


@register
def pointnet(num_classes: int, in_chans: int = 3, width: float = 1.0, dropout: float = 0.3,
             regularize_tnets: bool = False) -> PointNet:
    """PointNet with input and feature T-Nets (Qi et al. 2017); ``width`` scales every layer.
    Regularizers act on the shared MLPs and FCs only, unless ``regularize_tnets`` (module
    docstring: this project's choice)."""
    _check(width, dropout)
    if not isinstance(regularize_tnets, bool):
        raise ValueError(f"pointnet regularize_tnets must be true or false, got {regularize_tnets!r}")
    model = PointNet(num_classes, in_chans, width, transforms=True, dropout=dropout)
    model.weight_roles = _roles(model, regularize_tnets)
    return model


@register
def pointnet_vanilla(num_classes: int, in_chans: int = 3, width: float = 1.0,
                     dropout: float = 0.3) -> PointNet:
    """PointNet without T-Nets (shared MLP 64-64-64-128-1024, FC 512-256, no transform loss), two
    dropouts: this project's ablation, not the released ``pointnet_cls_basic.py`` (one dropout)."""
    _check(width, dropout)
    model = PointNet(num_classes, in_chans, width, transforms=False, dropout=dropout)
    model.weight_roles = _roles(model)
    return model
