"""One run over several processes: DistributedDataParallel under torchrun or Slurm multi-task.

A run is distributed when a process group of more than one process is initialised when the
run is set up (``benchmark.sweep.ddp`` initialises it from the environment torchrun or submitit's
``TorchDistributedEnvironment`` exports: ``nccl`` on CUDA, ``gloo`` on the CPU). Then:

* every rank builds the same model from the run's seed (DDP also broadcasts rank 0's weights),
  and the same regularizer with the same generator seed: RP-CoMHE draws the same projections on
  every rank, and AP/Adv-CoMHE's inner steps are deterministic functions of the (identical)
  weights, so the penalty and its gradient are the same on every rank;
* the protocol's ``batch_size`` is the GLOBAL batch. Every rank draws the same (seed, epoch)
  order as a one-process run and takes its contiguous ``batch_size / world_size`` slice of each
  global batch (:class:`ShardedBatchStream`); DDP averages the gradients, so the update is the
  one-process update on the global batch (cross-entropy is a per-example mean);
* ``runtime.sync_bn``: BatchNorm statistics over the global batch. On CUDA torch's
  ``SyncBatchNorm``; on the CPU (gloo) :class:`GlobalBatchNorm`, the same arithmetic written with
  differentiable all-reduces, because torch's ``SyncBatchNorm`` refuses CPU tensors. Without it
  each rank normalises with its own shard's statistics (and DDP broadcasts rank 0's running
  statistics before every forward, torch's default);
* evaluation is sharded: each rank evaluates a contiguous part of the test set, the correct
  counts and loss sums are all-reduced (exact counts over the whole set), the per-image
  correctness is gathered;
* records, checkpoints, progress and log lines come from rank 0 only (``is_main``).

The batch must divide by the world size; a checkpoint resumes at any world size that divides it
(its state is the global (epoch, position)). Packed seeds and the compiled / CUDA-graph steps
refuse DDP with a one-line ConfigError before the run (``check``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.config import ConfigError, Protocol
from benchmark.data.images import BatchStream
from benchmark.training.metrics import eval_sums

__all__ = ["DistInfo", "GlobalBatchNorm", "ShardedBatchStream", "all_mean", "all_reduce_sum", "broadcast_flag",
           "check", "current", "env_world_size", "evaluate_sharded", "init_from_env", "is_main",
           "min_over_ranks", "sync_batchnorm"]


@dataclass(frozen=True)
class DistInfo:
    """How a run is distributed: what its record states under ``distributed``."""

    world_size: int
    rank: int
    local_rank: int
    nodes: int
    backend: str

    def record(self, batch_size: int) -> dict:
        return {"world_size": self.world_size, "nodes": self.nodes, "backend": self.backend,
                "per_rank_batch": batch_size // self.world_size}


def env_world_size() -> int:
    """The world size a launcher announced (torchrun, Slurm via submitit): ``WORLD_SIZE``, or
    the initialised process group's size; 1 otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init_from_env(device_choice: str = "auto", timeout_s: float = 1800.0) -> DistInfo | None:
    """Initialise the default process group from the launcher's environment (env://: MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE) if the world has more than one process and no group exists;
    ``nccl`` when runs go to CUDA, ``gloo`` otherwise. Returns ``current()``."""
    if env_world_size() > 1 and not dist.is_initialized():
        cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} but {', '.join(missing)} "
                              "unset: launch with torchrun or --executor slurm")
        if cuda:
            torch.cuda.set_device(_local_rank() % max(1, torch.cuda.device_count()))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return current()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def current() -> DistInfo | None:
    """The distribution of runs set up now, or None (one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return DistInfo(world, dist.get_rank(), _local_rank(), max(1, world // max(1, local_world)),
                    str(dist.get_backend()))


def is_main() -> bool:
    """True on rank 0 and in a one-process run: the process that writes files and logs."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def check(proto: Protocol, world_size: int, packed: bool = False) -> None:
    """One-line ConfigError if a run of ``proto`` cannot be distributed over ``world_size``
    processes (nothing to check for one)."""
    if world_size <= 1:
        return
    if proto.batch_size % world_size:
        divisors = [g for g in range(1, proto.batch_size + 1) if proto.batch_size % g == 0]
        raise ConfigError(f"batch_size {proto.batch_size} (the global batch) does not divide by "
                          f"the world size {world_size}; allowed world sizes: "
                          f"{', '.join(map(str, divisors[:12]))}{', ...' if len(divisors) > 12 else ''}")
    if not proto.data.drop_last:
        raise ConfigError("data.drop_last false cannot be distributed (a partial last batch does "
                          "not split evenly over ranks); set data.drop_last true")
    if proto.runtime.compile not in ("auto", "off"):
        raise ConfigError(f"runtime.compile '{proto.runtime.compile}' is not supported with "
                          f"{world_size} processes (DDP); allowed: off, auto (= off under DDP)")
    if packed:
        raise ConfigError("--pack-seeds > 1 is not supported with several processes (DDP); "
                          "give --pack-seeds 1")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients (each rank's
    loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over ranks (torch.distributed.nn's is deprecated)."""
    return _AllReduceSum.apply(x)


class ShardedBatchStream(BatchStream):
    """This rank's contiguous ``batch_size / world`` slice of every global batch of the
    one-process stream with the same (seed, epoch): the ranks' slices, in rank order, are the
    one-process batch. Its state is the global (epoch, position), valid at any world size."""

    def __init__(self, ds, batch_size: int, seed: int, cfg, rank: int, world: int):
        super().__init__(ds, batch_size, seed, cfg)
        self.rank, self.world, self.local_batch = rank, world, batch_size // world

    def current_slice(self) -> slice:
        lo = self.position * self.batch_size + self.rank * self.local_batch
        return slice(lo, lo + self.local_batch)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks on any backend (gloo on the CPU included):
    two-pass mean and biased variance from all-reduced sums, differentiable all-reduces
    (:func:`all_reduce_sum`) so the gradient flows across ranks, running statistics (unbiased variance over the global
    count) as ``BatchNorm``. Outside training, or in one process, it is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = all_reduce_sum(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        return y


def sync_batchnorm(module: torch.nn.Module, cuda: bool) -> torch.nn.Module:
    """Every BatchNorm of ``module`` made global-batch: torch's SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere (same parameters and buffers, moved over)."""
    if cuda:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        for k, v in vars(module).items():  # hooks and attributes set on the module (roles)
            if not k.startswith("_") and k not in vars(new):
                setattr(new, k, v)
        return new
    for name, child in module.named_children():
        module.add_module(name, sync_batchnorm(child, cuda))
    return module


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``t`` (a new tensor); ``t`` itself in one process."""
    if current() is None:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def min_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum over ranks (in place); ``t`` in one process."""
    if current() is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` holds on ANY rank (every rank gets the same answer): ranks must agree
    on leaving a loop, or the ones left behind wait in a collective forever."""
    if current() is None:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def evaluate_sharded(run, batches_of, n: int, per_image: list | None = None) -> tuple[float, float]:
    """(accuracy %, mean CE) over the whole test set of ``n`` images, each rank evaluating its
    contiguous part ``batches_of(lo, hi)`` (an iterable of (uint8 images, labels)); the sums
    are all-reduced, so the count is exact. ``per_image`` receives the (n,) bool correctness
    in test-set order (gathered from every rank)."""
    info = current()
    world, rank = (1, 0) if info is None else (info.world_size, info.rank)
    chunk = -(-n // world)
    lo, hi = min(n, rank * chunk), min(n, (rank + 1) * chunk)
    correct, loss_sum, hits = eval_sums(run, batches_of(lo, hi))
    if info is not None:
        sums = torch.stack([correct.double(), loss_sum.double()])
        dist.all_reduce(sums)
        correct, loss_sum = sums[0], sums[1]
        padded = torch.zeros(chunk, dtype=torch.uint8, device=hits.device)
        padded[: hits.numel()] = hits.to(torch.uint8)
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        hits = torch.cat(gathered)[:n].bool()
    if per_image is not None:
        per_image.append(hits)
    return float(correct) * 100.0 / n, float(loss_sum) / n
