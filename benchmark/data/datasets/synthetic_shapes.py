"""Generated point clouds of simple solids: the offline, learnable stand-in for ModelNet-40.

Each class is a surface family (sphere, cube, cylinder, cone, torus, ellipsoid, square pyramid,
disc, capsule, two spheres); each shape is N_POINTS points sampled on it, with a random size and
aspect, a random pose (a tilt of up to 20 degrees, then any rotation about the up axis), Gaussian
noise (sigma 0.01) and the release's normalisation (centred, inside the unit sphere).
``synthetic_shapes:<classes>`` keeps the first 2-10 families (default 10). For the plumbing and
CPU profiles, never a result; every record says synthetic.
"""

from __future__ import annotations

import math

import torch

from benchmark.config import Data

from benchmark.data.datasets.registry import Dataset, register_dataset

N_TRAIN, N_TEST, N_POINTS = 2_000, 500, 1_024
FAMILIES = ("sphere", "cube", "cylinder", "cone", "torus", "ellipsoid", "pyramid", "disc",
            "capsule", "two_spheres")


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def _surface(family: str, n: int, p: int, g: torch.Generator) -> torch.Tensor:
    """(n, p, 3) points on the family's surface, up axis y, before pose and normalisation."""
    u, v = torch.rand(n, p, generator=g), torch.rand(n, p, generator=g)
    ang = 2 * math.pi * u
    if family in ("sphere", "ellipsoid"):
        pts = _unit(torch.randn(n, p, 3, generator=g))
        if family == "ellipsoid":
            pts = pts * torch.tensor([1.0, 0.45, 0.7])
        return pts
    if family == "cube":
        pts = torch.rand(n, p, 3, generator=g) * 2 - 1
        face = torch.randint(0, 3, (n, p), generator=g)
        sign = torch.randint(0, 2, (n, p), generator=g).float() * 2 - 1
        return pts.scatter(2, face[..., None], sign[..., None])
    if family == "cylinder":
        return torch.stack([torch.cos(ang), 2 * v - 1, torch.sin(ang)], -1)
    if family == "cone":
        r = torch.sqrt(v)  # uniform on the lateral surface
        return torch.stack([r * torch.cos(ang), 1 - 2 * r, r * torch.sin(ang)], -1)
    if family == "torus":
        phi = 2 * math.pi * v
        ring = 1 + 0.35 * torch.cos(phi)
        return torch.stack([ring * torch.cos(ang), 0.35 * torch.sin(phi), ring * torch.sin(ang)], -1)
    if family == "pyramid":
        h = 1 - torch.sqrt(v)  # height 0 (base) .. 1 (apex), area-uniform
        side = torch.randint(0, 4, (n, p), generator=g)
        t = (2 * u - 1) * (1 - h)
        e = 1 - h
        x = torch.where(side < 2, t, torch.where(side == 2, e, -e))
        z = torch.where(side < 2, torch.where(side == 0, e, -e), t)
        return torch.stack([x, 2 * h - 1, z], -1)
    if family == "disc":
        r = torch.sqrt(v)
        return torch.stack([r * torch.cos(ang), 0.05 * (2 * u.roll(1, 1) - 1), r * torch.sin(ang)], -1)
    if family == "capsule":
        pts = _unit(torch.randn(n, p, 3, generator=g)) * 0.5
        lift = torch.where(pts[..., 1:2] > 0, 0.6, -0.6)
        body = torch.stack([0.5 * torch.cos(ang), 1.2 * v - 0.6, 0.5 * torch.sin(ang)], -1)
        return torch.where((u < 0.5)[..., None], body, pts + torch.cat(
            [torch.zeros_like(lift), lift, torch.zeros_like(lift)], -1))
    if family == "two_spheres":
        pts = _unit(torch.randn(n, p, 3, generator=g)) * 0.5
        side = torch.where((u < 0.5)[..., None], 0.7, -0.7)
        return pts + torch.cat([side, torch.zeros_like(side), torch.zeros_like(side)], -1)
    raise ValueError(f"unknown family {family!r}")


def _pose(pts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = pts.shape[0]
    aspect = 0.75 + 0.5 * torch.rand(n, 1, 3, generator=g)
    pts = pts * aspect
    tilt = (torch.rand(n, generator=g) * 2 - 1) * math.radians(20)  # about x
    yaw = torch.rand(n, generator=g) * 2 * math.pi                  # about y (up)
    ct, st, cy, sy = torch.cos(tilt), torch.sin(tilt), torch.cos(yaw), torch.sin(yaw)
    one, zero = torch.ones(n), torch.zeros(n)
    rx = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, ct, -st], -1),
                      torch.stack([zero, st, ct], -1)], -2)
    ry = torch.stack([torch.stack([cy, zero, sy], -1), torch.stack([zero, one, zero], -1),
                      torch.stack([-sy, zero, cy], -1)], -2)
    pts = pts @ rx @ ry + 0.01 * torch.randn(pts.shape, generator=g)
    pts = pts - pts.mean(1, keepdim=True)
    return pts / pts.norm(dim=-1).amax(1)[:, None, None]


def make_shapes(classes: int, n: int, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, points, 3) float32 shapes with balanced-at-random labels (n,) in 0..classes-1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.empty(n, points, 3)
    for c in range(classes):
        rows = (y == c).nonzero().flatten()
        if len(rows):
            x[rows] = _pose(_surface(FAMILIES[c], len(rows), points, g), g).float()
    return x, y


@register_dataset("synthetic_shapes", num_classes=10, offline=True, arg="classes", channels=3,
                  kind="points", train_size=N_TRAIN, points=N_POINTS,
                  check_arg=lambda a: a.isdigit() and 2 <= int(a) <= len(FAMILIES),
                  description="generated point clouds of 2-10 solids (sphere, cube, cylinder, cone, "
                              "torus, ...), random pose and noise, 2,000/500 shapes of 1,024 points; "
                              "learnable, marked synthetic (synthetic_shapes:<classes>, default 10)")
def synthetic_shapes(arg: str | None, cfg: Data) -> Dataset:
    classes = int(arg) if arg else len(FAMILIES)
    xtr, ytr = make_shapes(classes, N_TRAIN, N_POINTS, seed=1234)
    xte, yte = make_shapes(classes, N_TEST, N_POINTS, seed=5678)
    return Dataset(f"synthetic_shapes:{classes}", xtr, ytr, xte, yte, num_classes=classes,
                   synthetic=True, kind="points")
