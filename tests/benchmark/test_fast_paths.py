"""The fast paths give the plain eager path's results (checked on the CPU).

`runtime.compile` (torch.compile of forward + loss + penalty, backward compiled with it) is on
by default on CUDA; here the same compiled code runs through inductor's CPU backend and is
compared with the eager path step by step. CUDA-graph replay itself needs a GPU
(tests/*/test_gpu.py, run by `python -m benchmark.gpu_check`).
"""

import pytest
import torch

from benchmark.config import RunSpec, load_protocol
from benchmark.engine import setup


def _losses(regularizer, compile_mode, steps=3):
    proto = load_protocol("smoke", {"runtime.compile": compile_mode})
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

    The first step sees identical weights, so it must agree to float32 rounding; later steps
    differ by reassociation amplified through SGD, so they get a looser bound.
    """
    torch._dynamo.reset()
    eager, p_eager, run_e = _losses("rp_comhe", "off")
    compiled, p_comp, run_c = _losses("rp_comhe", "default")
    assert run_e.compile_mode == "off" and run_c.compile_mode == "default"
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    for (ce_e, pen_e), (ce_c, pen_c) in zip(eager[1:], compiled[1:]):
        assert ce_c == pytest.approx(ce_e, rel=5e-3)
        assert pen_c == pytest.approx(pen_e, rel=5e-3)
    # One SGD step from identical weights: the updated parameters agree to float32 rounding.
    _, p1_eager, _ = _losses("rp_comhe", "off", steps=1)
    _, p1_comp, _ = _losses("rp_comhe", "default", steps=1)
    assert float((p1_comp - p1_eager).norm() / p1_eager.norm()) < 2e-5


def test_auto_compiles_only_on_cuda():
    run = setup(RunSpec(load_protocol("smoke"), "synthetic", "cnn9", "weight_decay", 0,
                        model_kwargs={"width": 0.125}))
    assert run.compile_mode == ("reduce-overhead" if torch.cuda.is_available() else "off")
