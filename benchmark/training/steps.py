"""The training step shared by a run and a packed run: plain, compiled, or replayed from a
whole-step CUDA graph (``runtime.compile``; :class:`benchmark.training.capture.GraphedStep`).

Per iteration, in the authors' order: the learning rate, the regularizer's pre-step hook (AP/Adv
inner projection steps, RP's fresh projections), then forward, loss + penalty, backward, SGD step.
"""

from __future__ import annotations

import torch

from benchmark.training.capture import GraphedStep


class Steps:
    """The training step shared by ``Run`` and ``packed.PackedRun``: plain, compiled, or replayed
    from a whole-step CUDA graph (``runtime.compile``; ``capture.GraphedStep``)."""

    def _init_step(self) -> None:
        mode, cuda = self.compile_mode, self.device.type == "cuda"
        self.loss_fn, self._graphed = self._eager_loss, None
        # the model's auxiliary losses of the last step (driven.Driven.last_aux); a graphed
        # step has none (checks.check_engine_support) and leaves this empty
        self.last_aux: dict[str, torch.Tensor] = {}
        if mode == "graph":
            if cuda:  # fused kernels without graphs of their own: the whole step is recorded
                self.loss_fn = torch.compile(self._eager_loss)
            self._graphed = GraphedStep(self, capture=cuda)
        elif mode != "off":
            self.loss_fn = torch.compile(self._eager_loss, mode=mode)
        # reduce-overhead replays CUDA graphs: each step must be marked, and the graph's
        # outputs are overwritten by the next replay (we read them within the step).
        self._mark_step = mode in ("reduce-overhead", "max-autotune") and cuda

    def autocast(self):
        # autocast's cast cache must be off while a CUDA graph is recorded (PyTorch's notes)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16,
                              cache_enabled=self.compile_mode != "graph")

    def step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One iteration in the authors' order; returns (loss, ce, penalty), not synced
        (0-dim for a run, (S,) for packed seeds). The model's auxiliary losses of the step
        ({name: tensor}, in the loss) are left in ``self.last_aux`` for the loop to record."""
        if self._graphed is not None:
            return self._graphed(lr)
        return self.eager_step(lr)

    def prepare_step(self, lr: float) -> None:
        """The learning rate, then the per-iteration hook, eager: AP/Adv inner projection steps
        (network frozen), RP's fresh projections. What follows is a pure function of weights and
        batch (compilable, recordable)."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.before_step(lr)

    def eager_step(self, lr: float):
        self.prepare_step(lr)
        x, y = self.stream.next()
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        loss, ce, pen, self.last_aux = self.loss_fn(self.inputs(x), y)
        self.opt.zero_grad(set_to_none=True)
        # packed seeds: the sum of the seeds' losses, so d(sum)/d(theta_s) = d(loss_s)/d(theta_s)
        loss.sum().backward()
        self.opt.step()
        return loss, ce, pen
