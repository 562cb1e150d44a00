"""The energy regularizers on PointNet's Conv1d (N, d, 1) weights: the same kernel, and
per-layer energies equal to the float64 reference written from the definition."""

import pytest
import torch

import models
import regularizers
from regularizers import hyperspherical_energy

from ._reference import energy as reference_energy


def _tiny_pointnet(tnets=False):
    torch.manual_seed(0)
    # width 1/16: 4-4 / 4-8-64 shared layers, FC 32-16, T-Nets included: small enough for the
    # pure-Python reference, every weight kind (Conv1d (N, d, 1), Linear) present
    model = models.create("pointnet", num_classes=5, width=1 / 16, regularize_tnets=tnets).double()
    with torch.no_grad():  # the T-Net maps start at zero: give them directions
        for name, p in model.named_parameters():
            if name.endswith("transform.weight"):
                p.normal_()
    return model


def test_conv1d_weights_are_three_dimensional_and_seen_by_the_regularizers():
    model = _tiny_pointnet()
    reg = regularizers.create("mhe").attach(model)
    names = [n for n, _, _ in reg.layers]
    # T-Net weights have role "transform" (models/pointnet.py): no regularizer acts on them
    assert names == [n for n, r in model.weight_roles.items() if r != "transform"]
    assert any(p.ndim == 3 and p.shape[-1] == 1 for _, p, _ in reg.layers)


@pytest.mark.parametrize("s", [2, 0, "a1"])
def test_per_layer_energies_equal_the_float64_reference(s):
    model = _tiny_pointnet()
    params = dict(model.named_parameters())
    for name in model.weight_roles:
        w = params[name].detach()
        if w.shape[0] < 2:
            continue
        got = float(hyperspherical_energy(w.reshape(w.shape[0], -1), s))
        want = reference_energy(w.reshape(w.shape[0], -1).tolist(), s)
        assert got == pytest.approx(want, rel=1e-10), name


@pytest.mark.parametrize("tnets", [False, True])
@pytest.mark.parametrize("name, half", [("mhe", False), ("hs_mhe", True)])
def test_mhe_penalty_on_pointnet_equals_the_reference_sum(name, half, tnets):
    model = _tiny_pointnet(tnets)
    reg = regularizers.create(name).attach(model)
    hp = reg.hparams
    assert len(reg.layers) == (20 if tnets else 8)
    want = 0.0
    for _, p, role in reg.layers:
        rows = p.detach().reshape(p.shape[0], -1).tolist()
        e = reference_energy(rows, hp["power"], half and role != "output")
        want += (hp["output_strength"] if role == "output" else hp["strength"]) * e
    assert float(reg.penalty().detach()) == pytest.approx(want, rel=1e-9)


def test_gradient_of_a_conv1d_energy():
    model = _tiny_pointnet()
    w = model.mlp2[0].weight.detach().clone().requires_grad_()  # (4, 4, 1) Conv1d weight
    assert w.ndim == 3
    assert torch.autograd.gradcheck(lambda t: hyperspherical_energy(t.reshape(t.shape[0], -1), 2), (w,))
