"""The whole training step as one CUDA graph: ``runtime.compile: graph``.

At batch 128 a CNN-9 step on an H100 is launch-bound: the GPU waits on hundreds of small kernel
launches (batch gather, augmentation, forward, backward, the regularizer, the SGD update). Here
that whole sequence is recorded once as a CUDA graph and replayed, one launch per step, with the
loss and penalty compiled by inductor (mode "default": fused kernels, no graphs of its own; a
graph cannot be recorded inside another).

What a replay cannot see is any Python value read while recording. There are two:

* the learning rate (SGD's update and AP/Adv's look-ahead use it as a constant): one graph per
  rate, recorded when the rate changes (three times in the paper's schedule);
* the batch position: a device counter the graph advances itself; the host resets it, and copies
  the epoch's order and augmentation into static buffers, only when the epoch turns.

The regularizer's ``before_step`` (AP/Adv inner projection steps) is recorded too when the
regularizer says it can be (``capturable_before_step``). RP-CoMHE's does not: its projections are
drawn eagerly from its own generator into static buffers the graph reads, so the random stream is
exactly the eager one and checkpoints stay exact. At each new rate the first ``warmup`` steps run uncaptured
(the same math, through ``stream.next()``) so that lazy state exists before recording (momentum
buffers, cuBLAS workspaces, compiled kernels); a partial last batch (drop_last false) also runs
uncaptured.

On the CPU there is nothing to record: the graph's body runs as plain code, step after step, with
the same host bookkeeping. That is what the CPU tests compare with the plain eager path
(tests/benchmark/test_fast_paths.py); the recording itself is checked on a GPU (test_gpu.py).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmark.data.images import take_batch


class StaticBatches:
    """A batch stream's batches gathered from static device buffers by a device counter, so
    that producing the batch can be part of a CUDA graph. Works for ``BatchStream`` and for
    ``PackedBatchStream`` (whose buffers carry a leading seed dimension)."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.template = stream.template
        device = self.template.x.device
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(self.template.batch_size, device=device)
        self.buffers: list[torch.Tensor] | None = None  # perm, oy, ox, flip of the loaded epoch
        self._epoch: int | None = None
        self._pos_host: int | None = None  # what the device counter holds, as far as we know

    def full_batch_ahead(self) -> bool:
        t = self.template
        return (self.stream.position + 1) * t.batch_size <= t.n

    def prepare(self) -> None:
        """Host side, before a replay: epoch buffers and counter at the stream's position."""
        st = self.stream
        st.ensure_epoch()
        if self._epoch != st.epoch:
            src = (st.perm, st.oy, st.ox, st.flip)
            if self.buffers is None:
                self.buffers = [s.clone() for s in src]
            else:
                for buf, s in zip(self.buffers, src):
                    buf.copy_(s)
            self._epoch, self._pos_host = st.epoch, None
        if self._pos_host != st.position:
            self.pos.fill_(st.position)
            self._pos_host = st.position

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inside the graph: the batch at the device counter, then the counter moves on."""
        sel = self.pos * self.template.batch_size + self.offsets
        batch = take_batch(self.template, *self.buffers, sel)
        self.pos += 1
        return batch

    def advanced(self) -> None:
        """Host side, after a replay: the stream and our copy of the counter move on."""
        self._pos_host += 1
        self.stream.advance()


class GraphedStep:
    """``run.step(lr)`` through a recorded graph (see the module docstring). ``run`` is an
    ``run.Run`` or a ``packed.PackedRun``; ``capture=False`` runs the body without recording."""

    def __init__(self, run: Any, capture: bool, warmup: int = 2):
        self.run, self.capture, self.warmup = run, capture, warmup
        self.batches = StaticBatches(run.stream)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr: float | None = None
        self.outputs = None
        self.uncaptured = 0  # steps run uncaptured at the current rate
        self.recorded = 0    # graphs recorded so far
        self.replayed = 0    # steps that went through the graph (or its body, unrecorded)
        self.before_inside = all(r.capturable_before_step for r in run.regs)
        # uncaptured steps run on a side stream, as PyTorch's CUDA-graph notes ask of warm-ups
        self.side = torch.cuda.Stream() if capture else None

    def __call__(self, lr: float):
        run = self.run
        if lr != self.graph_lr:
            self.graph, self.outputs, self.graph_lr, self.uncaptured = None, None, lr, 0
        if not self.batches.full_batch_ahead() or (self.graph is None and self.uncaptured < self.warmup):
            self.uncaptured += 1
            if self.side is None:
                return run.eager_step(lr)
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                out = run.eager_step(lr)
            torch.cuda.current_stream().wait_stream(self.side)
            return out
        for group in run.opt.param_groups:
            group["lr"] = lr
        if not self.before_inside:
            run.before_step(lr)
        self.batches.prepare()
        if not self.capture:
            out = self._body()
        else:
            if self.graph is None:
                self._record()
            self.graph.replay()
            out = self.outputs
        self.batches.advanced()
        self.replayed += 1
        return out

    def _body(self):
        run = self.run
        if self.before_inside:
            run.before_step(self.graph_lr)
        x, y = self.batches.next()
        # run.last_aux: empty here (checks.check_engine_support refuses auxiliary losses in graph mode)
        loss, ce, pen, run.last_aux = run.loss_fn(run.inputs(x), y)
        # Recording: gradients are None here, so backward allocates them in the graph's pool and
        # every replay overwrites them (no accumulation). Without recording: plain eager.
        run.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        run.opt.step()
        return loss, ce, pen

    def _record(self) -> None:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self._body()
        except Exception as exc:
            # Something in the step (often a new regularizer: a host read, a CPU tensor, an
            # unregistered generator) cannot be recorded. Say which mode to fall back to.
            names = ", ".join(sorted({r.name for r in self.run.regs}))
            raise RuntimeError(
                f"runtime.compile=graph: the training step ({names}) could not be recorded as a "
                f"CUDA graph ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "run with --set runtime.compile=reduce-overhead (or off)") from exc
        self.graph, self.outputs = graph, outputs
        self.recorded += 1
