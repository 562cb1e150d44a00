"""Packed seeds: S independent networks of one configuration trained as one program.

At batch 128 a GPU is mostly idle during a CNN-9 step, so S seeds stepped together cost far less
than S steps. The S networks stay exactly independent: each has its own initialisation, batch
order and augmentation, regularizer state and random draws, all seeded as the single run with
that seed would be, so seed s of a packed run is the single run with seed s up to floating-point
summation order (``tests/benchmark/test_packed.py`` checks this against the plain engine).

How, in one paragraph: the S models are built and seeded one by one, then their parameters and
buffers are stacked along a new leading dimension (``torch.func.stack_module_state``) and the
network is applied with ``torch.func.vmap`` over ``functional_call`` (convolutions become one
grouped convolution; BatchNorm statistics stay per seed). The loss is the SUM over seeds of each
seed's mean loss, so the gradient of seed s is exactly its own; SGD is elementwise, so one
optimiser over the stacked tensors is S independent optimisers. Each seed keeps its own
regularizer, which reads its slice of the stacked weights (``Regularizer.penalty_for``). The
per-seed model objects stay alive as views of the stacked tensors: energies, the weight-decay
term and the regularizers' attachment use them as they would a single run's model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

import regularizers
from benchmark.data import datasets
from benchmark.config import ConfigError, RunSpec
from benchmark.data.images import BatchStream, PackedBatchStream, scale_input
from benchmark.data.datasets import Dataset
from benchmark.training.metrics import layer_energies, smoothed_cross_entropy, weight_decay_term
from benchmark.training.checks import check_packable
from benchmark.training.driven import Driven
from benchmark.training.run import (
    build_model,
    make_optimizer,
    resolve_device,
    runtime_settings,
    set_bn_momentum,
)
from benchmark.training.steps import Steps


@dataclass
class PackedRun(Steps, Driven):
    """What a packed training step needs; the S-seed counterpart of ``run.Run``."""

    specs: list[RunSpec]
    device: torch.device
    data: Dataset
    base: torch.nn.Module           # the architecture on the meta device (holds no weights)
    models: list[torch.nn.Module]   # seed s's network, its tensors views of the stacked ones
    roles: dict[str, str]
    regs: list[Any]                 # one regularizer per seed, attached to models[s]
    params: dict[str, torch.Tensor]  # stacked (S, ...) leaves: what the optimiser updates
    buffers: dict[str, torch.Tensor]  # stacked BatchNorm statistics
    opt: torch.optim.Optimizer
    stream: PackedBatchStream
    bf16: bool
    memory_format: torch.memory_format
    compile_mode: str = "off"
    dtype: torch.dtype = torch.float32

    # one process: distributed.check refuses --pack-seeds under DDP (driven.Driven.dist_info)
    dist_info = None

    def __post_init__(self) -> None:
        self._init_step()
        self.last_correct: list[torch.Tensor] = []  # until the first evaluation

    @property
    def spec(self) -> RunSpec:
        return self.specs[0]

    @property
    def seeds(self) -> int:
        return len(self.specs)

    # ----------------------------------------------------------------- pieces
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return scale_input(x, self.spec.protocol.data.input_scaling, self.dtype)

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """Logits of every seed: x (S, B, ...) -> (S, B, K); or x (B, ...) for all seeds."""
        def one(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        # randomness="different": dropout (timm models) draws per seed, like independent runs
        return vmap(one, in_dims=(0, 0, None if shared_input else 0),
                    randomness="different")(self.params, self.buffers, x)

    def seed_weights(self, detach: bool = False) -> list[dict[str, torch.Tensor]]:
        """Per seed, the regularized weights by name: views (with gradient) of the stacked ones."""
        names = self.regs[0].layer_names
        views = {n: torch.unbind(self.params[n].detach() if detach else self.params[n]) for n in names}
        return [{n: views[n][s] for n in names} for s in range(self.seeds)]

    def _eager_loss(self, x: torch.Tensor, y: torch.Tensor):
        with self.autocast():
            logits = self.forward(x)
        p = self.spec.protocol
        ce = smoothed_cross_entropy(logits.to(self.dtype), y, p.label_smoothing, p.softmax_eps)  # (S,)
        pen = torch.stack([reg.penalty_for(w) for reg, w in zip(self.regs, self.seed_weights())])
        return ce + pen, ce, pen, {}  # no auxiliary losses (check_packable refuses such models)

    # ----------------------------------------------------------------- the step (steps.Steps)
    def set_bn_momentum(self, momentum: float) -> None:
        set_bn_momentum(self.base, momentum)  # functional_call runs base's modules

    def before_step(self, lr: float) -> None:
        for reg, w in zip(self.regs, self.seed_weights(detach=True)):
            reg.set_epoch(self.stream.epoch)  # as run.Run.before_step
            reg.set_progress(self.stream.epoch * self.stream.per_epoch + self.stream.position,
                             self.specs[0].protocol.iterations)
            reg.before_step_for(w, lr)

    # ----------------------------------------------------------------- diagnostics
    @property
    def per_epoch(self) -> int:
        return self.stream.per_epoch

    @property
    def model_notes(self) -> list[str]:
        return list(self.models[0].model_notes)

    def iteration0(self, weight_decay: float) -> list[tuple[float, float, float]]:
        """Per seed (CE of the first batch in training mode, weight-decay term, penalty) at
        initialisation; BN running statistics are restored, so training is unaffected."""
        saved = {k: v.clone() for k, v in self.buffers.items()}
        p = self.spec.protocol
        with torch.no_grad(), self.autocast():
            x, y = self.stream.next()
            self.stream.load_state_dict({"epoch": 0, "position": 0})
            ce = smoothed_cross_entropy(self.forward(self.inputs(x)).to(self.dtype), y, p.label_smoothing,
                                        p.softmax_eps)
        with torch.no_grad():
            for k, v in saved.items():
                self.buffers[k].copy_(v)
        pens = [float(reg.penalty().detach()) for reg in self.regs]
        return [(float(c), weight_decay_term(m, weight_decay), pen)
                for c, m, pen in zip(ce, self.models, pens)]

    @torch.no_grad()
    def evaluate(self, batch: int = 1000) -> list[tuple[float, float]]:
        """Per seed (accuracy %, mean CE) on the test set with running BN statistics."""
        x_all, y_all = self.data.test_x, self.data.test_y
        batch = max(1, batch // self.seeds)  # the same images per forward as a single run's total
        S = self.seeds
        correct = torch.zeros(S, device=x_all.device)
        loss_sum = torch.zeros(S, device=x_all.device)
        hits = []  # (S, b) per batch: per-image correctness, kept for the records
        self.base.eval()
        try:
            for lo in range(0, x_all.shape[0], batch):
                x, y = self.inputs(x_all[lo: lo + batch]), y_all[lo: lo + batch]
                with self.autocast():
                    logits = self.forward(x, shared_input=True).to(self.dtype)  # (S, b, K)
                hits.append(logits.argmax(-1) == y)
                correct += hits[-1].sum(-1)
                loss_sum += F.cross_entropy(logits.flatten(0, 1), y.repeat(S),
                                            reduction="none").view(S, -1).sum(-1)
        finally:
            self.base.train()
        self.last_correct = list(torch.cat(hits, dim=1).unbind(0))
        n = x_all.shape[0]
        return [(float(c) * 100.0 / n, float(s) / n) for c, s in zip(correct, loss_sum)]

    def layer_energies(self) -> list[dict[str, float]]:
        return [layer_energies(m, self.roles) for m in self.models]

    # ----------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        return {
            "params": {k: v.detach() for k, v in self.params.items()},
            "buffers": dict(self.buffers), "optimizer": self.opt.state_dict(),
            "regularizers": [reg.state_dict() for reg in self.regs],
            "stream": self.stream.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
            for k, v in state["buffers"].items():
                self.buffers[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        for reg, st in zip(self.regs, state["regularizers"]):
            reg.load_state_dict(st)
        self.stream.load_state_dict(state["stream"])


def setup_packed(specs: list[RunSpec]) -> PackedRun:
    """The packed counterpart of ``run.setup``: S seeded models stacked, S regularizers."""
    check_packable(specs)
    proto = specs[0].protocol
    device = resolve_device(proto.runtime.device)
    bf16, memory_format, mode, dtype = runtime_settings(proto, device)
    data = datasets.load(specs[0].dataset, proto.data).to(device)
    nets = []
    for spec in specs:
        torch.manual_seed(spec.seed)  # model init, exactly as the single run
        nets.append(build_model(spec, data).to(device=device, dtype=dtype))
    with torch.device("meta"):  # the architecture functional_call runs; holds no weights
        base = build_model(specs[0], data)
    params, buffers = stack_module_state(nets)
    # seed s's model now shows slices of the stacked tensors (no second copy of the weights)
    for s, net in enumerate(nets):
        for name, t in net.named_parameters():
            t.data = params[name].detach()[s]
        for name, t in net.named_buffers():
            t.data = buffers[name][s]
    roles = dict(getattr(nets[0], "weight_roles", {})) or regularizers.infer_roles(nets[0])
    regs = []
    for spec, net in zip(specs, nets):
        reg = regularizers.create(spec.regularizer, **spec.regularizer_hparams)
        regs.append(reg.attach(net, roles=roles, seed=spec.seed))
    opt = make_optimizer(list(params.values()), proto.optimizer)
    stream = PackedBatchStream([BatchStream(data, proto.batch_size, s.seed, proto.data) for s in specs])
    # channels_last has no meaning for the stacked 5-D batch: the packed path keeps the default
    del memory_format
    run = PackedRun(specs, device, data, base, nets, roles, regs, params, buffers, opt, stream,
                    bf16, torch.contiguous_format, mode, dtype)
    _check_reads_stand_ins(run)
    return run


def _check_reads_stand_ins(run: PackedRun) -> None:
    """Refuse a regularizer whose penalty reads its attached parameters directly instead of
    through ``_stack`` / ``_weight``: packed, its gradient would silently miss the weights that
    are trained. One penalty evaluation on seed 0, its state restored afterwards."""
    reg, net = run.regs[0], run.models[0]
    saved = copy.deepcopy(reg.state_dict())
    try:
        pen = reg.penalty_for(run.seed_weights()[0])
        own = [p for p in net.parameters() if p.requires_grad]
        leaks = pen.requires_grad and any(
            g is not None for g in torch.autograd.grad(pen, own, allow_unused=True))
    finally:
        reg.load_state_dict(saved)
    if leaks:
        raise ConfigError(f"regularizer '{reg.name}' reads its attached parameters directly, so it "
                          "cannot be packed; read weights through self.stack()/self.layer_weight() "
                          "(CONTRIBUTING.md), or run without --pack-seeds")
