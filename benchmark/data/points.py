"""Point-cloud batches: the stream of a ``kind="points"`` dataset, next to the image stream of
``benchmark.data.images`` (:func:`stream_for` picks one by the dataset's kind).

The training set lives on the device as float (N, P_max, C) points (ModelNet-40: 9,840 shapes of
2,048 points, 242 MB). Each epoch's shape order is a permutation drawn from a CPU generator
seeded by (run seed, epoch), as for images; each batch's augmentation is drawn from a generator
seeded by (run seed, epoch, batch position), so a resumed run needs only (epoch, position) and
every device sees the same numbers. The augmentation is that of the PointNet code
(github.com/charlesq34/pointnet, provider.py: ``rotate_point_cloud``, ``jitter_point_cloud``)
as batched tensor ops, plus the scale/shift of the PointNet++ code (provider.py
``random_scale_point_cloud``, ``shift_point_cloud``) when the protocol asks for it:

* points: the first ``num_points`` of each shape (train.py: ``current_data[:, 0:NUM_POINT, :]``),
  or with ``sampling: random`` a random subset in random order, new every epoch;
* rotation by a uniform angle about the up (y) axis: p -> p @ [[c, 0, s], [0, 1, 0], [-s, 0, c]];
* scale by a uniform factor in [scale_low, scale_high] and shift by a uniform vector in
  [-shift, shift]^3, per shape (off at 1, 1 and 0);
* jitter: clip(sigma * N(0, 1), -clip, clip) added to every coordinate.

Test shapes are the first ``num_points`` of each shape, not augmented (``points_input``).
"""

from __future__ import annotations

import torch

from benchmark.config import ConfigError, Data, PointData
from benchmark.data.images import BatchStream
from benchmark.data.stream import EpochCursor, batches_per_epoch, epoch_generator, epoch_seed
from benchmark.data.datasets import Dataset


def rotation_about_up(angles: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3) matrices R with p @ R the rotation of row vectors about y."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([c, zero, s], -1),
                        torch.stack([zero, one, zero], -1),
                        torch.stack([-s, zero, c], -1)], -2)


def augment_points(x: torch.Tensor, angles: torch.Tensor | None, scale: torch.Tensor | None,
                   shift: torch.Tensor | None, noise: torch.Tensor | None, clip: float) -> torch.Tensor:
    """Rotate, scale, shift, jitter a batch: x (B, P, C) with the first 3 coordinates xyz;
    angles, scale (B,); shift (B, 3); noise (B, P, C) already multiplied by sigma. None: skip."""
    xyz, rest = x[..., :3], x[..., 3:]
    if angles is not None:
        xyz = torch.bmm(xyz, rotation_about_up(angles).to(x.dtype))
    if scale is not None:
        xyz = xyz * scale[:, None, None]
    if shift is not None:
        xyz = xyz + shift[:, None, :]
    out = torch.cat([xyz, rest], -1) if rest.shape[-1] else xyz
    if noise is not None:
        out = out + noise.clamp(-clip, clip)
    return out


def points_input(x: torch.Tensor, cfg: PointData, dtype: torch.dtype) -> torch.Tensor:
    """What the model sees of stored shapes (N, P_max, C): the first num_points, as ``dtype``."""
    return x[:, : cfg.num_points].to(dtype)


class PointStream(EpochCursor):
    """The recipe's sampling over point clouds: reshuffle every epoch, consecutive batches, the
    last partial batch dropped (``data.drop_last``); a ``stream.TrainStream``."""

    def __init__(self, ds: Dataset, batch_size: int, seed: int, cfg: Data, train_aug: bool = True):
        self.x, self.y = ds.train_x, ds.train_y
        self.n = self.x.shape[0]
        if cfg.points.num_points > self.x.shape[1]:
            raise ConfigError(f"data.points.num_points={cfg.points.num_points} is more than the "
                              f"{self.x.shape[1]} points per shape of {ds.name}")
        self.batch_size = batch_size
        self.per_epoch = batches_per_epoch(self.n, batch_size, cfg.drop_last)
        if self.per_epoch < 1:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({self.n} shapes)")
        self.seed, self.cfg, self.train_aug = seed, cfg, train_aug
        self.epoch, self.position = 0, 0
        self.epoch_loaded = -1

    def ensure_epoch(self) -> None:
        if self.epoch_loaded != self.epoch:
            g = epoch_generator(self.seed, self.epoch)
            self.perm = torch.randperm(self.n, generator=g).to(self.x.device)
            self.epoch_loaded = self.epoch

    def batch_generator(self) -> torch.Generator:
        """The CPU generator of this batch's augmentation: seeded by (seed, epoch, position)."""
        key = epoch_seed(epoch_seed(self.seed, self.epoch), self.position)
        return torch.Generator().manual_seed(key % (2**63 - 1))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: float points (B, num_points, C) augmented, labels (B,)."""
        self.ensure_epoch()
        lo = self.position * self.batch_size
        idx = self.perm[lo: min(lo + self.batch_size, self.n)]
        p, g = self.cfg.points, self.batch_generator()
        B, P_max, C = idx.shape[0], self.x.shape[1], self.x.shape[2]
        dev = self.x.device
        if p.sampling == "random" and self.train_aug:
            sub = torch.rand(B, P_max, generator=g).argsort(1)[:, : p.num_points].to(dev)
            x = self.x[idx[:, None], sub]
        else:
            x = self.x[idx, : p.num_points]
        if self.train_aug:
            angles = (torch.rand(B, generator=g, dtype=torch.float64) * 2 * torch.pi).to(dev) \
                if p.rotate else None
            scale = (p.scale_low + torch.rand(B, generator=g) * (p.scale_high - p.scale_low)).to(dev) \
                if p.scale_high != p.scale_low or p.scale_low != 1.0 else None
            shift = ((torch.rand(B, 3, generator=g) * 2 - 1) * p.shift).to(dev) if p.shift > 0 else None
            noise = (torch.randn(B, x.shape[1], C, generator=g) * p.jitter_sigma).to(dev) \
                if p.jitter_sigma > 0 else None
            x = augment_points(x, angles, scale, shift, noise, p.jitter_clip)
        self.advance()
        return x, self.y[idx]



def stream_for(ds: Dataset, batch_size: int, seed: int, cfg: Data) -> BatchStream | PointStream:
    """The training stream of ``ds``: ``PointStream`` for point clouds, else ``BatchStream``."""
    if ds.kind == "points":
        return PointStream(ds, batch_size, seed, cfg)
    return BatchStream(ds, batch_size, seed, cfg)
