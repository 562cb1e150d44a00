"""The recorded training step, run on fake CUDA tensors: device placement and capture safety.

The whole-step CUDA graph (``runtime.compile: graph``) and packed seeds were built on machines
without a GPU. A CUDA graph replays only device work: a CPU tensor or host-to-device copy inside
the step, a value read back to the host, or a buffer rebound instead of written in place would
break the recording or silently replay stale data. These tests run exactly the body
``capture.GraphedStep`` records (batch gather and augmentation from the static epoch buffers,
AP/Adv inner steps, forward under bf16 autocast and channels_last, loss, penalty, SGD update)
on fake CUDA tensors, for every registered regularizer, single and packed, and fail on any such
op. How, and what stands in for the autograd engine: ``tests/benchmark/_fake_cuda.py``.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorDeviceMismatchError,
)

import regularizers
from benchmark.config import RunSpec, load_protocol
from benchmark.training.capture import GraphedStep

from ._fake_cuda import CaptureWatch, FakeCuda

LRS = [0.1, 0.1, 0.1, 0.01, 0.01]  # warm-up, body, body | new rate: warm-up, body


def _specs(regularizer, seeds, model="cnn9", **model_kwargs):
    proto = load_protocol("smoke", {
        "runtime.device": "cuda", "runtime.compile": "off", "runtime.precision": "auto",
        "runtime.channels_last": "auto", "batch_size": 16, "data.max_train": 64})
    return [RunSpec(proto, "synthetic", model, regularizer, s, model_kwargs=model_kwargs)
            for s in range(seeds)]


def _run_graph_body(specs):
    """Set up on fake CUDA and drive ``GraphedStep`` (unrecorded) over LRS, watching every op of
    the recorded body and of the eager pre-step hook. Returns (run, step, watch, outputs)."""
    watch = CaptureWatch()
    with FakeCuda() as fc:
        run = fc.setup(specs)
        assert run.device.type == "cuda" and run.bf16
        step = GraphedStep(run, capture=False, warmup=1)
        body, before = step._body, run.before_step

        def watched_body():
            with watch:
                return body()

        def watched_before(lr):
            with watch:
                return before(lr)

        step._body, run.before_step = watched_body, watched_before
        buffers = [dict(reg.named_buffers()) for reg in run.regs]
        params = [p for g in run.opt.param_groups for p in g["params"]]
        with fc.autograd_stand_ins(params):
            outputs = [step(lr) for lr in LRS]
        # what a graph reads must be the tensors it was recorded with: written in place, never rebound
        assert [dict(reg.named_buffers()) for reg in run.regs] == buffers
        assert all(a is b for a, b in zip(params, (p for g in run.opt.param_groups for p in g["params"])))
    return run, step, watch, outputs


@pytest.mark.parametrize("seeds", [1, 2], ids=["single", "packed2"])
@pytest.mark.parametrize("regularizer", regularizers.available())
def test_recorded_step_stays_on_the_device(regularizer, seeds):
    run, step, watch, outputs = _run_graph_body(_specs(regularizer, seeds, width=0.125))
    assert step.replayed == 3  # the body ran (not only the uncaptured warm-up steps)
    assert watch.problems == []
    assert watch.bf16_convolutions > 0  # autocast is on in the recorded body
    shape = () if seeds == 1 else (seeds,)
    for loss, ce, pen in outputs:
        assert loss.device.type == ce.device.type == pen.device.type == "cuda"
        assert loss.shape == ce.shape == pen.shape == shape


@pytest.mark.parametrize("model, kwargs, seeds", [
    ("resnet20", {}, 1),                                    # residual blocks, shortcut convolutions
    ("timm:resnet18", {}, 1),                               # a timm model with the CIFAR stem
    ("timm:resnet18", {}, 2),
    ("timm:vit_tiny_patch16_224", {"img_size": 32, "cifar_stem": False}, 1),  # attention, no BN
])
def test_recorded_step_other_architectures(model, kwargs, seeds):
    _, step, watch, _ = _run_graph_body(_specs("rp_comhe", seeds, model=model, **kwargs))
    assert step.replayed == 3 and watch.problems == []
    assert watch.bf16_convolutions > 0


def test_watch_catches_what_breaks_a_recording():
    """The checks above can fail: each kind of offending op is seen."""
    with FakeCuda():
        x = torch.ones(8, device="cuda")
        watch = CaptureWatch()
        with watch:
            torch.arange(8).to("cuda")           # host-to-device copy
            x * torch.tensor(2.0)                # CPU scalar tensor: a constant once recorded
        assert len(watch.problems) == 2, watch.problems
        with pytest.raises(FakeTensorDeviceMismatchError):
            x + torch.ones(8)                    # CPU tensor in a CUDA op
        with pytest.raises(DataDependentOutputException):
            float(x.sum())                       # value read back to the host
        with pytest.raises(DynamicOutputShapeException):
            x[x > 0]                             # boolean mask: a sync for the output size
