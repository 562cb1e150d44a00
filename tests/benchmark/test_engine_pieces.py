"""The engine's small pieces against float64 references written from their definitions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from benchmark.config import load_protocol
from benchmark.data.images import scale_input
from benchmark.data.datasets import load as load_dataset
from benchmark.training import (
    build_model,
    layer_energies,
    setup,
    smoothed_cross_entropy,
    weight_decay_term,
)
from tests.helpers import tiny_spec


def _reference_ce(logits, y, smoothing, eps):
    """-1/B sum_b sum_k t_bk log(softmax(z_b)_k + eps), t = (1 - s) onehot + s / K, in float64."""
    B, K = logits.shape
    total = 0.0
    for b in range(B):
        z = [float(v) for v in logits[b]]
        m = max(z)
        den = sum(math.exp(v - m) for v in z)
        for k in range(K):
            t = (1 - smoothing) * (k == int(y[b])) + smoothing / K
            total -= t * math.log(math.exp(z[k] - m) / den + eps)
    return total / B


@pytest.mark.parametrize("smoothing, eps", [(0.0, 0.0), (0.01, 0.0), (0.01, 1e-4), (0.2, 1e-2)])
def test_smoothed_cross_entropy_matches_its_definition(smoothing, eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    got = smoothed_cross_entropy(logits, y, smoothing, eps)
    assert got.shape == () and float(got) == pytest.approx(_reference_ce(logits, y, smoothing, eps),
                                                            rel=1e-12)
    # packed seeds: (S, B, K) -> one loss per seed, each the single-seed loss
    stacked = torch.stack([logits, logits.flip(0)])
    per_seed = smoothed_cross_entropy(stacked, torch.stack([y, y.flip(0)]), smoothing, eps)
    assert per_seed.shape == (2,)
    torch.testing.assert_close(per_seed, torch.stack([got, got]), rtol=1e-12, atol=0)
    # gradients of the epsilon form, checked by finite differences
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: smoothed_cross_entropy(t, y, smoothing, eps), (z,))


def test_softmax_eps_changes_the_loss_only_where_it_should():
    logits = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)  # softmax ~ (1, 1e-13, 1e-13)
    y = torch.tensor([1])
    plain = float(smoothed_cross_entropy(logits, y, 0.0, 0.0))
    capped = float(smoothed_cross_entropy(logits, y, 0.0, 1e-4))
    assert plain == pytest.approx(30.0, rel=1e-9)  # -log softmax_1 = 30 + log(1 + 2e-13)
    assert capped == pytest.approx(-math.log(math.exp(-30) / (1 + 2 * math.exp(-30)) + 1e-4), rel=1e-9)


def test_weight_decay_term_is_half_wd_times_every_squared_parameter():
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    squares = sum(float(v) ** 2 for p in model.parameters() for v in p.detach().double().flatten())
    assert weight_decay_term(model, 5e-4) == pytest.approx(5e-4 / 2 * squares, rel=1e-12)
    assert weight_decay_term(model, 0.0) == 0.0


def test_layer_energies_are_the_plain_full_space_s2_energy():
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 2, bias=False), nn.Linear(3, 5), nn.Linear(3, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    roles = {"0.weight": "first", "1.weight": "hidden", "2.weight": "output"}
    got = layer_energies(model, roles)
    assert set(got) == {"0.weight", "1.weight"}  # one neuron has no pairs: no energy

    def energy(w):  # recipe.md section 1, from the definition: mean over i<j of 1 / |w_i^ - w_j^|^2
        rows = [[float(v) for v in r] for r in w.detach().double().reshape(w.shape[0], -1)]
        norm = [math.sqrt(sum(v * v for v in r) + 1e-4) for r in rows]
        pairs = list(itertools.combinations(range(len(rows)), 2))
        return sum(1 / (2 - 2 * sum(a * b for a, b in zip(rows[i], rows[j])) / (norm[i] * norm[j]))
                   for i, j in pairs) / len(pairs)

    for name, module in (("0.weight", model[0]), ("1.weight", model[1])):
        assert got[name] == pytest.approx(energy(module.weight), rel=1e-5)  # float32 kernel


def _spec(**proto):
    return tiny_spec("weight_decay", 0, **{"iterations": 2, "schedule.milestones": [], **proto})


def test_protocol_bn_momentum_reaches_every_batchnorm():
    data = load_dataset("digits", load_protocol("smoke").data)
    for momentum in (0.3, 0.001):
        model = build_model(_spec(bn_momentum=momentum), data)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert len(bns) == 9 and {m.momentum for m in bns} == {momentum}
    # and it acts: one training-mode forward moves running_mean by momentum * batch mean
    model = build_model(_spec(bn_momentum=0.3), data).train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = {}
    bn.register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].detach().clone()))
    before = bn.running_mean.clone()
    model(scale_input(data.train_x[:16], "tf"))
    batch_mean = seen["x"].mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.7 * before + 0.3 * batch_mean)


@pytest.mark.parametrize("mode, expect", [("tf", lambda x: (x - 127.5) / 128), ("unit", lambda x: x / 255)])
def test_input_scaling_reaches_the_network(mode, expect):
    x = torch.tensor([[[[0, 1, 127, 128, 255]]]], dtype=torch.uint8)
    ref = expect(x.double())
    assert torch.equal(scale_input(x, mode, torch.float64), ref)
    run = setup(_spec(**{"data.input_scaling": mode}))
    batch = run.data.train_x[:4]
    torch.testing.assert_close(run.inputs(batch), expect(batch.float()), rtol=0, atol=0)


def test_one_record_schema_for_success_and_failure(tmp_path):
    """The engine's record and the runner's failure record come from records.make_record."""
    from benchmark import records
    from benchmark.sweep import write_failure_record

    spec = _spec()
    write_failure_record(spec, tmp_path, "runner: boom", 0.0)
    failed = records.load_record(records.record_path(tmp_path, spec.run_id))
    assert failed["status"] == "failed" and failed["config"] == spec.identity()
    assert set(records.REQUIRED_FIELDS) <= set(failed)
    with pytest.raises(ValueError, match="lacks"):
        records.make_record(spec, status="complete", reason=None)
    with pytest.raises(ValueError, match="status must be one of"):
        records.make_record(spec, status="done", reason=None)
