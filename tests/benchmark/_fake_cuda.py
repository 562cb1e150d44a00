"""The GPU code path, run on a machine without a GPU: fake CUDA tensors.

``FakeTensorMode`` gives tensors a device, shape, dtype and layout but no data, so the engine can
be set up on ``cuda`` and its training step run with nothing computed. What that checks:

* every tensor the step touches is on the CUDA device (a CPU tensor mixed into a CUDA op, or a
  host-to-device copy inside the step, would be a sync per step, and cannot be recorded in a
  CUDA graph: PyTorch refuses pageable copies while capturing);
* nothing in the step reads a value back to the host (``.item()``, ``float(t)``, boolean
  masks): fake tensors have no values, so such an op raises, as it would break a recording;
* bf16 autocast and channels_last are applied as on a GPU.

What it cannot run: the autograd engine starts a worker per CUDA device and needs a real one, so
``backward`` and ``torch.autograd.grad`` are replaced by stand-ins that hand every input a zero
gradient of its own shape, device and dtype. The code around them (AP/Adv's inner steps, the
SGD update) runs for real. The numerics of the CUDA path are checked on a GPU
(tests/*/test_gpu.py, run by ``python -m benchmark.tools.gpu_check``).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import models
from benchmark.training import packed
from benchmark.training import run as engine

aten = torch.ops.aten


class CaptureWatch(TorchDispatchMode):
    """Records every op that would sync or copy between host and device on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.ops = 0
        self.bf16_convolutions = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        self.ops += 1
        if any(t.device.type == "cuda" for t in tensors):
            # a 0-dim CPU tensor is passed by value: read once while recording, a constant on replay
            on_cpu = [tuple(t.shape) for t in tensors if t.device.type == "cpu"]
            if on_cpu:
                self.problems.append(f"{func}: CPU tensor(s) of shape {on_cpu} in a CUDA op")
        elif (func is aten._to_copy.default and tensors and tensors[0].device.type == "cpu"
              and torch.device(kwargs.get("device") or "cpu").type == "cuda"):
            self.problems.append(f"{func}: host-to-device copy of shape {tuple(tensors[0].shape)}")
        if func is aten.convolution.default and args[0].dtype == torch.bfloat16:
            self.bf16_convolutions += 1
        return func(*args, **kwargs)


def _zero_grads(params):
    def backward(self, *args, **kwargs):
        for p in params:
            p.grad = torch.zeros_like(p)
    return backward


def _autograd_grad(outputs, inputs, *args, **kwargs):
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    return tuple(torch.zeros_like(t) for t in inputs)


def _real_create(*args, **kwargs):
    # Built with real tensors (seeded init runs), then moved to fake CUDA by the engine's
    # ``.to(device)``: a module built from fake tensors cannot be moved (its tensors are weakly
    # referenced by the fake mode and refuse to be swapped).
    with unset_fake_temporarily():
        return _create(*args, **kwargs)


_create = models.create
_Generator = torch.Generator


class FakeCuda:
    """``with FakeCuda() as fc:``: inside, ``fc.setup(specs)`` builds a run (one spec) or a
    packed run (several) on fake CUDA tensors, and ``fc.autograd_stand_ins(params)`` is the
    context in which ``backward`` and ``torch.autograd.grad`` are replaced (module docstring)."""

    def __enter__(self) -> "FakeCuda":
        import torch.distributed.tensor  # noqa: F401  (torch imports it lazily; not under a patch)

        cuda = torch.device("cuda")
        self._stack = stack = contextlib.ExitStack()
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        for module in (engine, packed):
            stack.enter_context(mock.patch.object(module, "resolve_device", lambda choice: cuda))
        # autocast asks the driver whether CUDA and bf16 are there: say what an H100 would
        stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available",
                                       lambda: False))
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", lambda *a, **k: True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def setup(self, specs):
        # a CUDA generator needs the driver; a CPU one draws tensors of the same shapes. The
        # packed set-up's own check differentiates a penalty: it runs on the CPU in test_packed.
        with mock.patch("torch.Generator", lambda device=None: _Generator()), \
             mock.patch("models.create", _real_create), \
             mock.patch.object(packed, "_check_reads_stand_ins", lambda run: None):
            return engine.setup(specs[0]) if len(specs) == 1 else packed.setup_packed(specs)

    @staticmethod
    @contextlib.contextmanager
    def autograd_stand_ins(params):
        with mock.patch.object(torch.Tensor, "backward", _zero_grads(list(params))), \
             mock.patch("torch.autograd.grad", _autograd_grad):
            yield
