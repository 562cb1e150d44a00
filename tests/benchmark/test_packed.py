"""Packed seeds (benchmark/training/packed.py) against the plain engine, on the CPU.

Seed s of a packed run must be the single run with seed s: same initialisation, batches,
augmentation, regularizer draws and state, up to floating-point summation order (vmap turns the
S convolutions into one grouped convolution). They run in float64: this tiny network amplifies
float32 noise (a 1e-7 relative nudge of the weights moves the CE by 0.3 within six steps), while
in float64 the packed and single runs agree to ~1e-13 after one step. These tests fail if any
per-seed stream is shared, swapped or reseeded, if a gradient leaks across seeds, or if a
regularizer reads the wrong slice.
"""

import json

import pytest
import torch

import regularizers
from benchmark import records
from benchmark.config import ConfigError, load_protocol
from benchmark.data.images import BatchStream, PackedBatchStream
from benchmark.data.datasets import load as load_dataset
from benchmark.training import pack_id, setup, train, train_packed
from benchmark.training.packed import check_packable, setup_packed
from tests.helpers import tiny_spec


def spec(regularizer="rp_comhe", seed=0, hparams=None, **proto):
    return tiny_spec(regularizer, seed, hparams=hparams, **{
        "iterations": 10, "eval_every": 5, "checkpoint_every": 4, "runtime.precision": "fp64", **proto})


def test_packed_stream_is_each_seeds_own_stream():
    proto = load_protocol("smoke", {"batch_size": 50})
    ds = load_dataset("digits", proto.data)
    singles = [BatchStream(ds, 50, seed, proto.data) for seed in (0, 7, 3)]
    packed = PackedBatchStream([BatchStream(ds, 50, seed, proto.data) for seed in (0, 7, 3)])
    for _ in range(2 * singles[0].per_epoch + 3):  # across two epoch boundaries
        x, y = packed.next()
        assert x.shape[:2] == y.shape == (3, 50)
        for s, single in enumerate(singles):
            xs, ys = single.next()
            assert torch.equal(x[s], xs) and torch.equal(y[s], ys)
    assert packed.state_dict() == singles[0].state_dict()


@pytest.mark.parametrize("regularizer", [  # srip stays in the quick set; the others are slow
    pytest.param("rp_comhe", marks=pytest.mark.slow), pytest.param("ap_comhe", marks=pytest.mark.slow),
    "srip", pytest.param("hs_mhe", marks=pytest.mark.slow)])
def test_packed_steps_match_single_runs(regularizer):
    specs = [spec(regularizer, seed) for seed in (4, 1)]
    packed = setup_packed(specs)
    singles = [setup(s) for s in specs]
    # identical initialisation, seed by seed
    for s, single in enumerate(singles):
        for name, p in single.model.named_parameters():
            assert torch.equal(packed.params[name][s], p), name
    for it in range(6):
        lr = specs[0].protocol.lr_at(it)
        loss, ce, pen = packed.step(lr)
        assert loss.shape == (2,)
        for s, single in enumerate(singles):
            l1, c1, p1 = single.step(lr)
            torch.testing.assert_close(ce[s], c1, rtol=1e-9, atol=0)
            torch.testing.assert_close(pen[s], p1, rtol=1e-9, atol=1e-12)
    for s, single in enumerate(singles):
        for name, p in single.model.named_parameters():
            torch.testing.assert_close(packed.params[name][s], p, rtol=1e-8, atol=1e-10, msg=name)
        for name, b in single.model.named_buffers():
            torch.testing.assert_close(packed.buffers[name][s], b, rtol=1e-8, atol=1e-10, msg=name)
        # the per-seed model objects are views of the stacked tensors
        for name, p in packed.models[s].named_parameters():
            assert p.data_ptr() == packed.params[name][s].data_ptr(), name
    # regularizer state (learned projections, SRIP's start vectors) evolves per seed
    states = [dict(packed.regs[s].named_buffers()) for s in range(2)]
    for s, single in enumerate(singles):
        for name, b in single.reg.named_buffers():
            torch.testing.assert_close(states[s][name], b, rtol=1e-8, atol=1e-10, msg=name)
    for name in states[0]:
        if name == "decay":  # SRIP's epoch multiplier: the same epoch for every seed
            continue
        assert not torch.allclose(states[0][name], states[1][name]), name


@pytest.mark.slow
def test_packed_train_writes_each_seeds_record_as_the_single_run(tmp_path):
    specs = [spec("rp_comhe", seed) for seed in (0, 2)]
    recs = train_packed(specs, tmp_path / "packed", progress=False)
    for s, rec in zip(specs, recs):
        single = train(s, tmp_path / "single", progress=False)
        on_disk = json.loads(records.record_path(tmp_path / "packed", s.run_id).read_text())
        assert on_disk == json.loads(json.dumps(rec))
        assert rec["run_id"] == single["run_id"] and rec["seed"] == s.seed
        assert rec["status"] == "complete" and rec["runtime"]["packed_seeds"] == 2
        assert single["runtime"]["packed_seeds"] == 1
        assert rec["curves"]["iteration"] == single["curves"]["iteration"]
        for key in ("train_loss", "penalty", "energy_total"):
            assert rec["curves"][key] == pytest.approx(single["curves"][key], rel=1e-8), key
        assert rec["final"]["test_acc"] == single["final"]["test_acc"]
    assert not list((tmp_path / "packed").rglob("*.pt"))
    assert not list((tmp_path / "packed").rglob("*.tmp"))


@pytest.mark.slow
def test_packed_run_resumes_to_identical_metrics(tmp_path):
    specs = [spec("ap_comhe", seed) for seed in (5, 6)]
    full = train_packed(specs, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    assert train_packed(specs, part, progress=False, stop_after=6) == [{}, {}]
    assert records.checkpoint_path(part, pack_id(specs)).exists()
    resumed = train_packed(specs, part, progress=False)
    for a, b in zip(full, resumed):
        assert a["final"] == b["final"] and a["curves"] == b["curves"]


class _NanForSeed1(regularizers.Regularizer):
    """Test-only: a non-finite penalty for seed 1, zero for any other seed."""

    name = "test_nan_for_seed1"
    HPARAMS = {}

    def penalty(self):
        z = self.stack([0]).sum() * 0.0
        return z + (float("nan") if self.seed == 1 else 0.0)


@pytest.mark.slow
def test_a_diverging_seed_does_not_touch_the_others(tmp_path, monkeypatch):
    from regularizers import registry

    monkeypatch.setitem(registry._REGISTRY, _NanForSeed1.name, _NanForSeed1)
    specs = [spec(_NanForSeed1.name, seed) for seed in (0, 1)]
    ok, bad = train_packed(specs, tmp_path, progress=False)
    assert bad["status"] == "diverged" and bad["reason"] == "non-finite loss at iteration 0"
    assert bad["curves"]["iteration"] == [] and bad["final"]["iteration"] == 0
    assert ok["status"] == "complete"
    # seed 0 trained exactly as a plain weight-decay run would (its penalty is zero)
    alone = train(spec("weight_decay", 0), tmp_path / "alone", progress=False)
    assert ok["curves"]["train_loss"] == pytest.approx(alone["curves"]["train_loss"], rel=1e-8)


def test_only_runs_differing_by_seed_pack():
    check_packable([spec(seed=0), spec(seed=1)])
    with pytest.raises(ConfigError, match="differ by seed only"):
        check_packable([spec("rp_comhe", 0), spec("hs_mhe", 1)])
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        check_packable([spec(seed=0), spec(seed=0)])


@pytest.mark.slow
def test_runner_packs_seeds_and_skips_finished_runs(tmp_path):
    from benchmark.sweep import pack_by_seed, run_suite

    specs = [spec(reg, seed, iterations=4, eval_every=2, **{"schedule.milestones": [2]}) for reg in ("weight_decay", "rp_comhe")
             for seed in (0, 1, 2)]
    units = pack_by_seed(specs, 2)
    assert [[(s.regularizer, s.seed) for s in u] for u in units] == [
        [("weight_decay", 0), ("weight_decay", 1)], [("weight_decay", 2)],
        [("rp_comhe", 0), ("rp_comhe", 1)], [("rp_comhe", 2)]]
    summary = run_suite(specs, tmp_path, pack_seeds=2, progress=False)
    assert summary.ok and len(summary.executed) == 6
    packed = {load["seed"]: load["runtime"]["packed_seeds"]
              for load in (records.load_record(records.record_path(tmp_path, s.run_id))
                           for s in specs if s.regularizer == "rp_comhe")}
    assert packed == {0: 2, 1: 2, 2: 1}
    again = run_suite(specs, tmp_path, pack_seeds=2, progress=False)
    assert again.ok and again.executed == {}
    with pytest.raises(ConfigError, match="pack_seeds must be an integer >= 1"):
        run_suite(specs, tmp_path, pack_seeds=0, progress=False)


@pytest.mark.slow
def test_runner_packs_in_worker_processes(tmp_path):
    from benchmark.sweep import run_suite

    specs = [spec("hs_mhe", seed, iterations=2, eval_every=2, **{"schedule.milestones": [1]}) for seed in (0, 1)]
    summary = run_suite(specs, tmp_path, pack_seeds=2, jobs=2, progress=False)
    assert summary.ok and set(summary.executed.values()) == {"complete"}
    for s in specs:
        rec = records.load_record(records.record_path(tmp_path, s.run_id))
        assert rec["runtime"]["packed_seeds"] == 2


class _ReadsParametersDirectly(regularizers.Regularizer):
    """Test-only: a penalty that bypasses _stack/_weight (what a careless plugin might do)."""

    name = "test_reads_parameters"
    HPARAMS = {}

    def penalty(self):
        return sum(p.square().sum() for _, p, _ in self.layers)


def test_a_regularizer_that_bypasses_stand_ins_is_refused(monkeypatch):
    from regularizers import registry

    monkeypatch.setitem(registry._REGISTRY, _ReadsParametersDirectly.name, _ReadsParametersDirectly)
    with pytest.raises(ConfigError, match="reads its attached parameters directly"):
        setup_packed([spec(_ReadsParametersDirectly.name, seed) for seed in (0, 1)])
    setup(spec(_ReadsParametersDirectly.name, 0))  # a single run is fine


@pytest.mark.slow
def test_compiled_packed_step_matches_eager_packed():
    """On a GPU a packed run compiles its loss by default (``reduce-overhead``): vmap over the
    stacked networks, and every seed's penalty through its stand-in weights. Here the same code
    through inductor's CPU backend, float64, three steps against the eager packed step. AP-CoMHE:
    its penalty also reads the learned projections and the learning rate (RP's compiled packed
    loss runs in test_fast_paths.py). About 2 minutes of compilation on 2 CPU cores."""
    regularizer = "ap_comhe"
    torch._dynamo.reset()
    runs = [setup_packed([spec(regularizer, seed, **{"runtime.compile": mode}) for seed in (0, 3)])
            for mode in ("off", "default")]
    assert [r.compile_mode for r in runs] == ["off", "default"]
    for it in range(3):
        lr = runs[0].spec.protocol.lr_at(it)
        (l0, c0, p0), (l1, c1, p1) = (r.step(lr) for r in runs)
        torch.testing.assert_close(c1, c0, rtol=1e-9, atol=0)
        torch.testing.assert_close(p1, p0, rtol=1e-9, atol=1e-12)
    for name, p in runs[0].params.items():
        torch.testing.assert_close(runs[1].params[name], p, rtol=1e-9, atol=1e-12, msg=name)
