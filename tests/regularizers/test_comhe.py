import copy

import pytest
import torch

import regularizers
from regularizers import hyperspherical_energy, projected_energy, group_energy
from regularizers.comhe import P_L2, adv_p_loss, ap_p_loss
from regularizers.energy import neuron_cosines

from .conftest import TinyNet


def _n(p):
    return p.reshape(p.shape[0], -1)


def _unprojected_part(net, strength=1.0, out_strength=10.0):
    """first and 'small' (fan-in 8 <= proj_dim) unprojected half-space; output full-space."""
    return (strength * (hyperspherical_energy(net.first, 2, True) + hyperspherical_energy(net.small, 2, True))
            + out_strength * hyperspherical_energy(net.out, 2, False))


def test_rp_with_fixed_projections_equals_projected_energy(tiny):
    reg = regularizers.create("rp_comhe", proj_dim=10, num_projections=4).attach(tiny, seed=5)
    got = reg.penalty()
    # documented draw order: one randn (L, C, k, d) per projected group, from Generator(seed)
    P = torch.randn(2, 4, 10, 50, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = _unprojected_part(tiny) + sum(projected_energy(_n(w), P[i], 2, True)
                                         for i, w in enumerate([tiny.h1, tiny.h2]))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_rp_redraws_every_iteration_and_same_seed_same_penalty(tiny):
    a = regularizers.create("rp_comhe", proj_dim=10, num_projections=3).attach(tiny, seed=1)
    b = regularizers.create("rp_comhe", proj_dim=10, num_projections=3).attach(tiny, seed=1)
    c = regularizers.create("rp_comhe", proj_dim=10, num_projections=3).attach(tiny, seed=2)
    pa, pb, pc = a.penalty(), b.penalty(), c.penalty()
    assert pa == pb and pa != pc
    # Within an iteration the penalty is a pure function of the weights (compilable,
    # capturable); the projections are redrawn by the per-iteration hook.
    assert a.penalty() == pa
    a.before_step(0.1)
    b.before_step(0.1)
    assert a.penalty() != pa and a.penalty() == b.penalty()


@pytest.mark.parametrize("name", ["rp_comhe", "ap_comhe", "adv_comhe"])
def test_state_dict_round_trip_gives_identical_next_penalty(name, tiny):
    kw = {"proj_dim": 10}
    a = regularizers.create(name, **kw).attach(tiny, seed=3)
    a.before_step(0.05)
    a.penalty()
    sd = copy.deepcopy(a.state_dict())
    a.before_step(0.05)
    want = a.penalty()
    b = regularizers.create(name, **kw).attach(tiny, seed=99)
    b.load_state_dict(sd)
    b.before_step(0.05)
    assert b.penalty() == want
    if name != "rp_comhe":
        torch.testing.assert_close(b.projection("h2"), a.projection("h2"), rtol=0, atol=0)


def test_rp_gradients_reach_every_weight(tiny):
    regularizers.create("rp_comhe", proj_dim=10).attach(tiny).penalty().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.parameters())


def test_ap_inner_steps_lower_the_angle_distortion(tiny):
    reg = regularizers.create("ap_comhe", proj_dim=10, inner_steps=5).attach(tiny)
    before = reg.p_loss().item()
    reg.before_step(0.1)
    after = reg.p_loss().item()
    assert after < before - 1e-3
    # definition of the loss, written out: ||cos(WP^T) - cos(W)||_F + L2
    W, P = _n(tiny.h1), reg.projection("h1")
    fro = (neuron_cosines(W @ P.T) - neuron_cosines(W)).norm()
    assert ap_p_loss(W, P).item() == pytest.approx((fro + P_L2 * (P ** 2).sum() / 2).item(), rel=1e-12)


def test_adv_inner_steps_raise_the_projected_full_space_energy(tiny):
    reg = regularizers.create("adv_comhe", proj_dim=10).attach(tiny)
    W = _n(tiny.h1)
    before = projected_energy(W, reg.projection("h1"), 2, half_space=False).item()
    reg.before_step(0.5)
    after = projected_energy(W, reg.projection("h1"), 2, half_space=False).item()
    assert after > before + 1e-4
    assert adv_p_loss(W, reg.projection("h1")).item() == pytest.approx(
        -after + P_L2 * (reg.projection("h1") ** 2).sum().item() / 2, rel=1e-12)


def test_ap_penalty_uses_the_look_ahead_projection(tiny):
    lr = 0.3
    reg = regularizers.create("ap_comhe", proj_dim=10, inner_steps=0).attach(tiny)
    reg.before_step(lr)
    P = torch.stack([reg.projection("h1"), reg.projection("h2")]).detach().requires_grad_(True)
    W = torch.stack([_n(tiny.h1), _n(tiny.h2)]).detach()
    (g,) = torch.autograd.grad(ap_p_loss(W, P).sum(), P)
    want = _unprojected_part(tiny) + projected_energy(W, (P - lr * g).unsqueeze(1), 2, True).sum()
    torch.testing.assert_close(reg.penalty(), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_second_order_gradient_matches_finite_differences(name):
    net = TinyNet()
    lr = 2.0  # large look-ahead so the second-order term is visible
    regs = {fo: regularizers.create(name, proj_dim=10, inner_steps=0, first_order=fo).attach(net)
            for fo in (False, True)}
    grads = {}
    for fo, reg in regs.items():
        reg.before_step(lr)
        net.zero_grad()
        reg.penalty().backward()
        grads[fo] = net.h1.grad.detach().clone()
    reg, h = regs[False], 1e-6
    fd = torch.zeros(4, dtype=torch.float64)
    coords = [(0, 0, 0, 0), (1, 1, 2, 3), (3, 0, 4, 1), (5, 1, 0, 2)]
    with torch.no_grad():
        for i, idx in enumerate(coords):
            old = net.h1[idx].item()
            net.h1[idx] = old + h
            up = reg.penalty().item()
            net.h1[idx] = old - h
            down = reg.penalty().item()
            net.h1[idx] = old
            fd[i] = (up - down) / (2 * h)
    second = torch.stack([grads[False][c] for c in coords])
    first = torch.stack([grads[True][c] for c in coords])
    torch.testing.assert_close(second, fd, rtol=1e-5, atol=1e-8)
    assert (first - fd).abs().max() > 1e-4 * fd.abs().max()  # first order really is different


def test_g_comhe_definition(tiny):
    hidden = [tiny.h1, tiny.h2]
    # g_comhe has no proj_dim: only the first layer is unprojected; 'small' (d=8) is grouped too
    with pytest.raises(ValueError, match="'small' has fan-in d=8"):
        regularizers.create("g_comhe", groups=5).attach(tiny)
    reg = regularizers.create("g_comhe", groups=2).attach(tiny)
    want = (hyperspherical_energy(tiny.first, 2, True) + 10 * hyperspherical_energy(tiny.out, 2, False)
            + sum(group_energy(_n(w), 2, 2, True) for w in hidden + [tiny.small]))
    torch.testing.assert_close(reg.penalty(), want, rtol=1e-12, atol=0)
    manual = torch.stack([hyperspherical_energy(_n(tiny.h1)[:, 25 * g:25 * (g + 1)], 2, True)
                          for g in range(2)]).mean()
    torch.testing.assert_close(group_energy(_n(tiny.h1), 2), manual, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="groups=4 must divide d"):  # 50 % 4 != 0
        regularizers.create("g_comhe", groups=4).attach(tiny)


def test_comhe_layer_treatment(tiny):
    reg = regularizers.create("rp_comhe", proj_dim=10)
    reg.attach(tiny)
    modes = {tiny_name: m for idx, m in zip(reg._groups, reg._modes) for tiny_name in
             [reg.layer_names[i] for i in idx]}
    assert modes == {"first": "half", "h1": "proj", "h2": "proj", "small": "half", "out": "full"}
    assert [len(i) for i in reg._groups if len(i) > 1] == [2]  # h1, h2 stacked together


@pytest.mark.parametrize("name", regularizers.available())
def test_every_regularizer_float32_finite_on_the_weights_device(name):
    """On the CPU here; tests/regularizers/test_gpu.py repeats the device check on CUDA."""
    net = TinyNet(dtype=torch.float32)
    kw = {"groups": 2} if name == "g_comhe" else {}
    reg = regularizers.create(name, **kw).attach(net, seed=0)
    reg.before_step(0.1)
    p = reg.penalty()
    assert p.shape == () and p.dtype == torch.float32 and torch.isfinite(p)
    assert p.device == next(net.parameters()).device
    if p.requires_grad:
        p.backward()
        assert all(torch.isfinite(q.grad).all() for q in net.parameters() if q.grad is not None)
