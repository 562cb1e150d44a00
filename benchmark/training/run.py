"""One run's training state, built from a spec: data on the device, the seeded model, the
regularizer attached, the optimiser and the batch stream. ``Run`` is one of the two
implementations of ``driven.Driven`` (what the training loop drives); the checks made before
any run are in ``checks.py``.

Under torchrun or Slurm multi-task (an initialised process group of more than one process) the
run is data-parallel: ``benchmark.training.distributed`` says what changes.

GPU: the protocol's ``runtime.precision`` (the paper protocols: fp32 with TF32 tensor cores;
"auto": bf16 autocast) and channels_last. CPU: fp32. The code path is the same.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch

import models
import regularizers
from benchmark.data import datasets
from benchmark.config import ConfigError, RunSpec
from benchmark.data.images import BatchStream, scale_input
from benchmark.data.datasets import Dataset
from benchmark.data.files import FileBatchStream, eval_batches
from benchmark.data.points import PointStream, points_input, stream_for
from benchmark.training.distributed import (
    ShardedBatchStream,
    DistInfo,
    all_mean,
    check as check_distributed,
    current as current_distribution,
    evaluate_sharded,
    sync_batchnorm,
)
from benchmark.training.metrics import (
    evaluate,
    layer_energies,
    smoothed_cross_entropy,
    weight_decay_term,
)
from benchmark.training.driven import Driven
from benchmark.training.steps import Steps


def resolve_threads(threads: int) -> int:
    """runtime.threads: 0 = the cores this process may use (not divided by --jobs)."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class Run(Steps, Driven):
    """Everything a training step needs, built once from a spec (also used by ``perf``)."""

    spec: RunSpec
    device: torch.device
    data: Dataset
    model: torch.nn.Module
    roles: dict[str, str]
    reg: Any  # a regularizers.Regularizer
    opt: torch.optim.Optimizer
    stream: BatchStream | PointStream
    bf16: bool
    memory_format: torch.memory_format
    compile_mode: str = "off"
    dtype: torch.dtype = torch.float32  # of weights, inputs and loss (autocast aside)
    # DDP (training.distributed): the wrapped model the step's forward goes through, and the
    # distribution (None: one process). ``model`` stays the plain module everywhere else.
    ddp: Any = None
    dist_info: DistInfo | None = None

    def __post_init__(self) -> None:
        self._init_step()
        self.last_correct: list[torch.Tensor] = []  # until the first evaluation

    def _eager_loss(self, x: torch.Tensor, y: torch.Tensor):
        """(loss, CE, penalty, {name: auxiliary loss}): the model's auxiliary losses (the hook:
        ``forward_with_aux``) are part of the loss and reported by name."""
        with self.autocast():
            logits, aux = model_outputs(self.model if self.ddp is None else self.ddp, x)
        p = self.spec.protocol
        ce = smoothed_cross_entropy(logits.to(self.dtype), y, p.label_smoothing, p.softmax_eps)
        pen = self.reg.penalty()
        loss = ce + pen
        for term in aux.values():
            loss = loss + term.to(loss.dtype)
        return loss, ce, pen, aux

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.data.kind == "points":
            return points_input(x, self.spec.protocol.data.points, self.dtype)
        x = scale_input(x, self.spec.protocol.data.input_scaling, self.dtype)
        return x.contiguous(memory_format=self.memory_format)

    def set_bn_momentum(self, momentum: float) -> None:
        """Every BatchNorm's momentum (the protocol's bn_momentum_schedule, set before a step)."""
        set_bn_momentum(self.model, momentum)

    @property
    def seeds(self) -> int:
        return 1

    def before_step(self, lr: float) -> None:
        # the epoch of the batch this step takes (Regularizer.set_epoch: SRIP's schedule)
        self.reg.set_epoch(self.stream.epoch)
        self.reg.set_progress(self.stream.epoch * self.stream.per_epoch + self.stream.position,
                              self.spec.protocol.iterations)  # Regularizer.set_progress
        self.reg.before_step(lr)

    # ----------------------------------------------------------------- driven.Driven
    @property
    def per_epoch(self) -> int:
        return self.stream.per_epoch

    @property
    def model_notes(self) -> list[str]:
        return list(self.model.model_notes)

    def iteration0(self, weight_decay: float) -> list[tuple[float, float, float]]:
        """(CE of the first batch, weight-decay term, penalty) at initialisation. The forward runs
        in training mode (batch statistics, as the authors' log) and the BN running statistics
        are restored after it: the diagnostic must not change the training that follows."""
        saved = [b.clone() for b in self.model.buffers()]
        p = self.spec.protocol
        with torch.no_grad(), self.autocast():
            x, y = self.stream.next()
            self.stream.load_state_dict({"epoch": 0, "position": 0})
            logits, _ = model_outputs(self.model, self.inputs(x))
            ce = smoothed_cross_entropy(logits.to(self.dtype), y, p.label_smoothing, p.softmax_eps)
        with torch.no_grad():
            for b, v in zip(self.model.buffers(), saved):
                b.copy_(v)
        pen = self.reg.penalty()
        if self.dist_info is not None:  # this rank's shard: the mean over ranks is the batch's
            ce = all_mean(ce)
        return [(float(ce), weight_decay_term(self.model, weight_decay), float(pen.detach()))]

    def evaluate(self) -> list[tuple[float, float]]:
        self.last_correct = []  # per-image correctness of this evaluation, for the record
        batches_of = self.data.test_batches if self.data.kind == "files" else None
        if batches_of is None and self.dist_info is None:
            # point clouds: (batch, 1024 channels, points) activations; 1,000 shapes would be 4 GB
            batch = 64 if self.data.kind == "points" else 1000
            return [evaluate(self, self.data.test_x, self.data.test_y, batch=batch,
                             per_image=self.last_correct)]
        if batches_of is None:
            x, y = self.data.test_x, self.data.test_y
            batches_of = functools.partial(_tensor_batches, x, y)
        return [evaluate_sharded(self, batches_of, self.data.test_y.shape[0], self.last_correct)]

    def layer_energies(self) -> list[dict[str, float]]:
        return [layer_energies(self.model, self.roles)]

    @property
    def models(self) -> list[torch.nn.Module]:
        return [self.model]

    @property
    def regs(self) -> list[Any]:
        return [self.reg]

    @property
    def specs(self) -> list[RunSpec]:
        return [self.spec]

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "regularizer": self.reg.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.reg.load_state_dict(state["regularizer"])
        self.stream.load_state_dict(state["stream"])


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, lo: int, hi: int, batch: int = 1000):
    """Test images lo..hi of device tensors, in batches (one rank's part of a sharded evaluation)."""
    for i in range(lo, hi, batch):
        yield x[i : min(i + batch, hi)], y[i : min(i + batch, hi)]


def runtime_settings(proto, device: torch.device) -> tuple[bool, torch.memory_format, str, torch.dtype]:
    """(bf16 autocast, memory format, compile mode, dtype) the protocol's ``runtime`` gives.

    On CUDA it also sets the process-wide TF32 switches for this run (every run sets them, so
    one run's precision never leaks into the next): "tf32" allows TF32 tensor cores for fp32
    matmuls and convolutions, "fp32" forbids both (strict fp32), bf16/auto/fp64 keep PyTorch's
    defaults (matmuls strict, cuDNN convolutions TF32). The record says what was in effect
    (``runtime.tf32_matmul`` / ``runtime.tf32_cudnn``, :func:`tf32_state`).
    """
    cuda = device.type == "cuda"
    rt = proto.runtime
    bf16 = rt.precision == "bf16" or (rt.precision == "auto" and cuda)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = rt.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = rt.precision != "fp32"
    cl = rt.channels_last
    memory_format = torch.channels_last if cl == "on" or (cl == "auto" and cuda) else torch.contiguous_format
    mode = rt.compile
    if mode == "auto":
        mode = "reduce-overhead" if cuda else "off"
    dtype = torch.float64 if rt.precision == "fp64" else torch.float32
    return bf16, memory_format, mode, dtype


def tf32_state(device: torch.device) -> dict[str, bool]:
    """Whether fp32 matmuls / cuDNN convolutions may use TF32 tensor cores (False on the CPU)."""
    cuda = device.type == "cuda"
    return {"tf32_matmul": cuda and bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": cuda and bool(torch.backends.cudnn.allow_tf32)}


def model_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(logits, {name: 0-dim auxiliary loss}) of a training forward. The engine's hook for
    model-side losses (docs/internals.md): a model that defines ``forward_with_aux(x)`` returning
    (logits, dict) has every term added to the training loss and recorded by name in the curves
    (``aux``); other models give an empty dict. Evaluation calls ``model(x)`` (logits only)."""
    fwd = getattr(model, "forward_with_aux", None)
    if fwd is None:
        return model(x), {}
    return fwd(x)


def set_bn_momentum(model: torch.nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def make_optimizer(params, o) -> torch.optim.Optimizer:
    """The protocol's optimiser (``optimizer.name``) over ``params``; weight decay on all of them."""
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay)


def build_model(spec: RunSpec, data: Dataset) -> torch.nn.Module:
    """The spec's model for this data (initialised from the global seed, on the current default
    device), with the protocol's BatchNorm momentum."""
    model = models.create(spec.model, num_classes=data.num_classes, in_chans=data.in_chans,
                          **spec.model_kwargs)
    momentum = spec.protocol.bn_momentum
    if spec.protocol.bn_momentum_schedule is not None:
        momentum = spec.protocol.bn_momentum_at(0)
    if momentum is not None:
        set_bn_momentum(model, momentum)
    return model


def setup(spec: RunSpec) -> Run:
    """Data on the device, model (seeded init), regularizer attached, optimiser, batch stream."""
    proto = spec.protocol
    info = current_distribution()  # a process group of > 1 (sweep.ddp, or a test): DDP
    device = resolve_device(proto.runtime.device)
    if info is not None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    bf16, memory_format, mode, dtype = runtime_settings(proto, device)
    if info is not None:
        check_distributed(proto, info.world_size)
        mode = "off"  # compile "auto" under DDP: the eager step (distributed.check)
    data = datasets.load(spec.dataset, proto.data).to(device)
    torch.manual_seed(spec.seed)  # model init
    model = build_model(spec, data).to(device=device, dtype=dtype, memory_format=memory_format)
    if info is not None and proto.runtime.sync_bn:
        model = sync_batchnorm(model, cuda=device.type == "cuda")
    roles = dict(getattr(model, "weight_roles", {})) or regularizers.infer_roles(model)
    reg = regularizers.create(spec.regularizer, **spec.regularizer_hparams)
    reg.attach(model, roles=roles, seed=spec.seed)
    # weight_decay on every parameter, BN gamma/beta included, as the recipe.
    opt = make_optimizer(model.parameters(), proto.optimizer)
    if data.kind == "files":  # imagenet: a DataLoader stream, sharded (checks refuse graph mode)
        rank, world = (0, 1) if info is None else (info.rank, info.world_size)
        workers = proto.runtime.loader_workers
        stream = FileBatchStream(data, proto.batch_size, spec.seed, proto.data, device, rank,
                                 world, workers)
        data.test_batches = eval_batches(data, proto.data, device, workers)
    elif info is None:
        stream = stream_for(data, proto.batch_size, spec.seed, proto.data)
    else:  # images only: validate refuses point clouds under DDP
        stream = ShardedBatchStream(data, proto.batch_size, spec.seed, proto.data, info.rank,
                                    info.world_size)
    if info is None:
        return Run(spec, device, data, model, roles, reg, opt, stream, bf16, memory_format, mode,
                   dtype)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(spec, device, data, model, roles, reg, opt, stream, bf16, memory_format, mode, dtype,
               ddp=ddp, dist_info=info)
