"""The fast paths give the plain eager path's results (checked on the CPU).

`runtime.compile` (torch.compile of forward + loss + penalty, backward compiled with it) is on
by default on CUDA; here the same compiled code runs through inductor's CPU backend and is
compared with the eager path step by step. CUDA-graph replay itself needs a GPU
(tests/*/test_gpu.py, run by `python -m benchmark.tools.gpu_check`).
"""

import pytest
import torch

from benchmark.config import RunSpec, load_protocol
from benchmark.training import setup


def _losses(regularizer, compile_mode, steps=3):
    # float64: inductor reassociates sums, and this recipe's tiny network amplifies float32
    # rounding to percent-level differences within a few steps; in float64 it stays far below
    # the tolerance, so the test can tell a real difference from rounding.
    proto = load_protocol("smoke", {"runtime.compile": compile_mode, "runtime.precision": "fp64"})
    run = setup(RunSpec(proto, "synthetic", "cnn9", regularizer, 0, model_kwargs={"width": 0.125}))
    out = []
    for it in range(steps):
        loss, ce, pen = run.step(proto.lr_at(it))
        out.append((float(ce.detach()), float(pen.detach())))
    params = torch.cat([p.detach().flatten() for p in run.model.parameters()])
    return out, params, run


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """RP-CoMHE covers the whole compiled region: forward, CE, projected and plain energies.

    Three steps, so that a compiled path that went wrong after the first update shows too.
    """
    torch._dynamo.reset()
    eager, p_eager, run_e = _losses("rp_comhe", "off")
    compiled, p_comp, run_c = _losses("rp_comhe", "default")
    assert run_e.compile_mode == "off" and run_c.compile_mode == "default"
    for (ce_e, pen_e), (ce_c, pen_c) in zip(eager, compiled):
        assert ce_c == pytest.approx(ce_e, rel=1e-9)
        assert pen_c == pytest.approx(pen_e, rel=1e-9)
    assert float((p_comp - p_eager).norm() / p_eager.norm()) < 1e-9


def test_auto_compiles_only_on_cuda():
    run = setup(RunSpec(load_protocol("smoke"), "synthetic", "cnn9", "weight_decay", 0,
                        model_kwargs={"width": 0.125}))
    assert run.compile_mode == ("reduce-overhead" if torch.cuda.is_available() else "off")


def _run_steps(compile_mode, regularizer="rp_comhe", packed_seeds=0, steps=20, **over):
    """Loss/CE/penalty per step, final weights and the run (8 batches of 16 per epoch)."""
    from benchmark.training.packed import setup_packed

    overrides = {"runtime.compile": compile_mode, "iterations": steps, "batch_size": 16,
                 "data.max_train": 128, "schedule.milestones": [3, 11], **over}
    proto = load_protocol("smoke", overrides)
    specs = [RunSpec(proto, "digits", "cnn9", regularizer, seed, model_kwargs={"width": 0.125})
             for seed in range(max(packed_seeds, 1))]
    run = setup_packed(specs) if packed_seeds else setup(specs[0])
    trace = []
    for it in range(steps):
        loss, ce, pen = run.step(proto.lr_at(it))
        trace.append(torch.stack([loss.detach(), ce.detach(), pen.detach()]).clone())
    state = [p.detach().clone() for p in (run.params.values() if packed_seeds else run.model.parameters())]
    return torch.stack(trace), state, run


@pytest.mark.parametrize("regularizer, packed_seeds, over", [
    ("rp_comhe", 0, {}),                                            # projections drawn outside
    ("ap_comhe", 0, {}),                                            # inner steps + look-ahead
    ("srip", 0, {"data.drop_last": False, "data.max_train": 120}),  # partial batches, eager draws
    pytest.param("rp_comhe", 2, {}, marks=pytest.mark.slow),        # packed seeds
])
def test_whole_step_graph_body_matches_eager(regularizer, packed_seeds, over):
    """``runtime.compile: graph`` on the CPU runs the body it would record on a GPU, with the same
    host bookkeeping: device batch counter, epoch buffers, one graph per learning rate, uncaptured
    warm-up steps at each new rate, partial batches uncaptured. 20 steps of 8-batch epochs cross
    two epoch boundaries and two rate changes. Same operations in the same order: the result
    must equal the eager path bit for bit."""
    eager, w_eager, _ = _run_steps("off", regularizer, packed_seeds, **over)
    graph, w_graph, run = _run_steps("graph", regularizer, packed_seeds, **over)
    assert run._graphed is not None and run._graphed.capture is False
    # 2 warm-up steps ran uncaptured at each of the 3 rates (and partial batches); the rest
    # went through the graph body
    partial = 2 if over.get("data.drop_last") is False else 0
    assert run._graphed.replayed == 20 - 3 * 2 - partial
    # RP's projections and SRIP's start vectors are drawn eagerly, before each replay
    assert run._graphed.before_inside == (regularizer not in ("rp_comhe", "srip"))
    assert run._graphed.batches._epoch == run.stream.epoch
    torch.testing.assert_close(graph, eager, rtol=0, atol=0)
    for a, b in zip(w_graph, w_eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_graph_batches_follow_the_stream_across_epochs():
    """The device-counter batches are the stream's batches, position by position."""
    from benchmark.data.images import BatchStream
    from benchmark.data.datasets import load as load_dataset
    from benchmark.training.capture import StaticBatches

    proto = load_protocol("smoke", {"data.max_train": 200, "batch_size": 48})
    ds = load_dataset("digits", proto.data)
    ref, st = BatchStream(ds, 48, 3, proto.data), BatchStream(ds, 48, 3, proto.data)
    batches = StaticBatches(st)
    for _ in range(3 * ref.per_epoch + 1):
        xr, yr = ref.next()
        batches.prepare()
        x, y = batches.next()
        batches.advanced()
        assert torch.equal(x, xr) and torch.equal(y, yr)
        assert int(batches.pos) == batches._pos_host or st.position == 0


@pytest.mark.slow
@pytest.mark.parametrize("regularizer, packed_seeds", [("ap_comhe", 0), ("rp_comhe", 2)])
def test_graph_mode_compiles_only_outside_the_recording(regularizer, packed_seeds):
    """On a GPU the ``graph`` mode runs the loss through torch.compile inside the recorded body.
    A recompilation there would compile (and load kernels) in the middle of a CUDA-graph capture.
    So the warm-up steps at each rate must leave nothing to compile: the body's inputs (batches
    gathered from the static buffers) must match what the warm-up compiled for (the stream's own
    batches) in every guarded property. Here with the GPU's settings on the CPU: bf16 autocast,
    channels_last, the loss compiled (inductor's CPU backend), the recording's autocast without
    cast cache; AP's penalty reads the learning rate, so each rate compiles once, in its warm-up.
    """
    from benchmark.training.capture import GraphedStep
    from benchmark.training.packed import setup_packed

    torch._dynamo.reset()
    proto = load_protocol("smoke", {
        "runtime.compile": "graph", "runtime.precision": "bf16", "runtime.channels_last": "on",
        "iterations": 12, "batch_size": 16, "data.max_train": 64, "schedule.milestones": [5]})
    specs = [RunSpec(proto, "digits", "cnn9", regularizer, seed, model_kwargs={"width": 0.125})
             for seed in range(max(packed_seeds, 1))]
    run = setup_packed(specs) if packed_seeds else setup(specs[0])
    assert run.bf16 and run._graphed is not None
    run._loss = torch.compile(run._eager_loss)  # what _init_step does on CUDA
    step: GraphedStep = run._graphed
    body = step._body

    def body_without_recompiling():
        with torch._dynamo.config.patch(error_on_recompile=True):
            return body()

    step._body = body_without_recompiling
    for it in range(12):  # two rates, three epoch turns (4 batches per epoch)
        loss, _, _ = step(proto.lr_at(it))
        assert torch.isfinite(loss).all()
    assert step.replayed == 12 - 2 * step.warmup


def test_graph_that_cannot_be_recorded_says_which_mode_to_use(monkeypatch):
    """A step that cannot be captured (a host read, a CPU tensor...) fails with one line naming
    the regularizer and the modes to fall back to. The CUDA calls are stand-ins on the CPU."""
    import contextlib

    proto = load_protocol("smoke", {"runtime.compile": "graph"})
    run = setup(RunSpec(proto, "synthetic", "cnn9", "srip", 0, model_kwargs={"width": 0.125}))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())

    def body():
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    run._graphed._body = body
    with pytest.raises(RuntimeError, match=r"^runtime.compile=graph: the training step \(srip\) could "
                                           r"not be recorded as a CUDA graph \(RuntimeError: CUDA "
                                           r"error: operation not permitted when stream is "
                                           r"capturing\); run with --set "
                                           r"runtime.compile=reduce-overhead \(or off\)$"):
        run._graphed._record()
