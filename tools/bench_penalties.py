"""Penalty forward+backward time over the paper CNN-9's weights: batched vs a literal loop.

    python tools/bench_penalties.py [--reps 7] [--device cuda]

Sets torch.set_num_threads(2) and re-executes itself with MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_ = 1e9 (docs/performance.md: without them CPU timings wander). Prints a
markdown table; the ratio loop / batched is measured in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from regularizers import create, hyperspherical_energy
from regularizers.roles import neurons

# recipe.md section 4: (name, shape, role); fc6 is the 4x4 valid conv, score the 1x1 conv.
CNN9_WEIGHTS = [("conv1_1", (64, 3, 3, 3), "first"), ("conv1_2", (64, 64, 3, 3), "hidden"),
                ("conv1_3", (64, 64, 3, 3), "hidden"), ("conv2_1", (128, 64, 3, 3), "hidden"),
                ("conv2_2", (128, 128, 3, 3), "hidden"), ("conv2_3", (128, 128, 3, 3), "hidden"),
                ("conv3_1", (256, 128, 3, 3), "hidden"), ("conv3_2", (256, 256, 3, 3), "hidden"),
                ("conv3_3", (256, 256, 3, 3), "hidden"), ("fc6", (256, 256, 4, 4), "hidden"),
                ("score", (100, 256, 1, 1), "output")]


class CNN9Weights(nn.Module):
    """Only the CNN-9 weights (He init), tagged with weight_roles; no forward."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for name, shape, _ in CNN9_WEIGHTS:
            fan_in = shape[1] * shape[2] * shape[3]
            self.register_parameter(name, nn.Parameter(torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5))
        self.weight_roles = {name: role for name, _, role in CNN9_WEIGHTS}


def loop_hs_mhe(net: CNN9Weights) -> torch.Tensor:
    """Literal port: one kernel call per layer, no stacking."""
    total = 0.0
    for name, _, role in CNN9_WEIGHTS:
        W = neurons(getattr(net, name))
        total = total + (10.0 * hyperspherical_energy(W, 2, False) if role == "output"
                         else hyperspherical_energy(W, 2, True))
    return total


def loop_rp_comhe(net: CNN9Weights, g: torch.Generator, k: int = 30, C: int = 20) -> torch.Tensor:
    """Literal port: per layer, a Python loop over the C projections, one draw and one energy each."""
    total = 0.0
    for name, _, role in CNN9_WEIGHTS:
        W = neurons(getattr(net, name))
        if role == "output":
            total = total + 10.0 * hyperspherical_energy(W, 2, False)
        elif role == "first" or W.shape[1] <= k:
            total = total + hyperspherical_energy(W, 2, True)
        else:
            layer = 0.0
            for _ in range(C):
                P = torch.randn(k, W.shape[1], generator=g, device=W.device)
                layer = layer + hyperspherical_energy(W @ P.T, 2, True)
            total = total + layer / C
    return total


def _drawn(reg):
    """RP draws its projections in the per-iteration hook: time the draw with the penalty, as
    the loop does."""
    reg.before_step(0.1)
    return reg.penalty()


def _time(fn, net, reps: int, sync=lambda: None) -> list[float]:
    out = []
    for _ in range(reps):
        net.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        fn().backward()
        sync()  # on a GPU, wall time including the queue drain (the loop is launch-bound)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    net = CNN9Weights().to(dev)
    hs = create("hs_mhe").attach(net)
    rp = create("rp_comhe", proj_dim=30, num_projections=20).attach(net)
    g = torch.Generator(device=dev).manual_seed(0)
    cases = {"hs_mhe batched": hs.penalty, "hs_mhe per-layer loop": lambda: loop_hs_mhe(net),
             "rp_comhe batched": lambda: _drawn(rp), "rp_comhe per-projection loop": lambda: loop_rp_comhe(net, g)}
    times = {k: [] for k in cases}
    for fn in cases.values():
        _time(fn, net, 2, sync)  # warm-up
    for _ in range(args.reps):  # interleave so drift hits every case alike
        for name, fn in cases.items():
            times[name] += _time(fn, net, 1, sync)
    med = {k: statistics.median(v) for k, v in times.items()}
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, "
          f"median of {args.reps} reps, penalty forward+backward, CNN-9 weights (float32)")
    print("| penalty | ms (median) | loop / batched |\n|---|---|---|")
    for name in cases:
        base = med[name.split()[0] + " batched"]
        print(f"| {name} | {med[name]:.1f} | {med[name] / base:.2f} |")


if __name__ == "__main__":
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "1000000000":
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1000000000", MALLOC_TRIM_THRESHOLD_="1000000000")
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    main()
