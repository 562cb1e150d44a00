"""SRIP in short protocols (issue 28): the engine hands the regularizer its progress
(``Regularizer.set_progress``), schedule "scaled" anneals over the protocol's length, and every
short protocol says which SRIP regime its SRIP row tests."""

from pathlib import Path

import pytest

from benchmark.training import setup, train
from tests.helpers import tiny_spec

PROTOCOLS = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "protocols"


def _spec(schedule, **over):
    return tiny_spec("srip", 1, hparams={"schedule": schedule}, **{
        "iterations": 10, "eval_every": 10, "checkpoint_every": 100, "data.max_train": 64,
        "batch_size": 32, **over})


@pytest.mark.slow
def test_scaled_srip_anneals_over_the_run_and_is_recorded(tmp_path):
    """10 iterations (2 per epoch): "scaled" drops at iterations 1 / 3 / 4 / 6 (the first at or
    after 10 / 25 / 35 / 60 % of the run), where "released" stays at 1 (epoch 4 < 20). The
    iteration comes from the data stream's (epoch, position), which a resumed run restores."""
    s = _spec("scaled")
    run = setup(s)
    want = {0: 1.0, 1: 1e-3, 3: 1e-4, 4: 1e-6, 6: 0.0}
    mult = 1.0
    for it in range(10):
        mult = want.get(it, mult)
        run.step(s.protocol.lr_at(it))
        assert (run.reg.iteration, run.reg.iterations, run.reg.epoch) == (it, 10, it // 2)
        assert run.reg.decay.item() == pytest.approx(mult, rel=1e-7), it
    rec = train(s, tmp_path / "full", progress=False)
    assert [(p["iteration"], p["multiplier"]) for p in rec["regularizer_schedule"]] == list(want.items())
    assert rec["regularizer_hparams_resolved"]["schedule"] == "scaled"
    assert train(_spec("released"), tmp_path / "rel", progress=False)["regularizer_schedule"] == [
        {"epoch": 0, "iteration": 0, "multiplier": 1.0}]


@pytest.mark.parametrize("name", ["cpu_quick", "fashion_cpu", "pointnet_cpu"])
def test_every_short_protocol_says_which_srip_regime_it_tests(name):
    text = (PROTOCOLS / f"{name}.yaml").read_text()
    assert "SRIP row" in text and "schedule=scaled" in text, name
