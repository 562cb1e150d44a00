import copy

import numpy as np
import pytest
import torch

import regularizers
from regularizers import group_energy, hyperspherical_energy, projected_energy
from regularizers.comhe import P_L2, adv_p_loss, ap_p_loss
from regularizers.energy import neuron_cosines

from .conftest import TinyNet


def _n(p):
    return p.reshape(p.shape[0], -1)


def _unprojected_part(net, strength=1.0, out_strength=10.0):
    """first and 'small' (fan-in 8 <= proj_dim) unprojected half-space; output full-space: the
    ``unprojected="fan_in"`` rule, which the tests using this pass explicitly (FAN_IN)."""
    return (strength * (hyperspherical_energy(net.first, 2, True) + hyperspherical_energy(net.small, 2, True))
            + out_strength * hyperspherical_energy(net.out, 2, False))


FAN_IN = {"unprojected": "fan_in"}


def test_rp_with_fixed_projections_equals_projected_energy(tiny):
    reg = regularizers.create("rp_comhe", proj_dim=10, num_projections=4, **FAN_IN).attach(tiny, seed=5)
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
    reg = regularizers.create("ap_comhe", proj_dim=10, inner_steps=0, **FAN_IN).attach(tiny)
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


def test_check_model_refuses_on_shapes_alone_with_no_state_built():
    """check_model (what the runner calls before a run) on a meta-device model: the same
    refusal as attach, and no state built; a model it accepts gives the layers attach uses."""
    from tests.regularizers.conftest import TinyNet as Net

    with torch.device("meta"):
        meta = Net(dtype=torch.float32)
    reg = regularizers.create("g_comhe", groups=4)
    with pytest.raises(ValueError, match="groups=4 must divide d"):
        reg.check_model(meta)
    assert reg.layers == [] and not list(reg.buffers())
    layers = regularizers.create("g_comhe", groups=2).check_model(meta)
    assert [(n, r) for n, _, r in layers] == [("first", "first"), ("h1", "hidden"), ("h2", "hidden"),
                                               ("small", "hidden"), ("out", "output")]


def _modes(reg):
    return {reg.layer_names[i]: m for idx, m in zip(reg._groups, reg._modes) for i in idx}


def test_comhe_layer_treatment(tiny):
    """Default: the released rule (architecture.py ``_conv_layer``: ``if n_input == 3`` gets
    ``_add_thomson_first``, every other layer ``_add_thomson_project``, the score layer
    ``_add_thomson_final``), read as "the first layer": 'small' (fan-in 8 < proj_dim) is projected
    (k = 10 > d = 8), as in the released code."""
    for name in ("rp_comhe", "ap_comhe", "adv_comhe"):
        reg = regularizers.create(name, proj_dim=10).attach(tiny)
        assert _modes(reg) == {"first": "half", "h1": "proj", "h2": "proj", "small": "proj",
                               "out": "full"}, name
        assert [len(i) for i in reg._groups if len(i) > 1] == [2]  # h1, h2 stacked together
    # this project's earlier rule, kept as an option
    reg = regularizers.create("rp_comhe", proj_dim=10, **FAN_IN).attach(tiny)
    assert _modes(reg) == {"first": "half", "h1": "proj", "h2": "proj", "small": "half", "out": "full"}
    # the literal released test: a weight with 3 input channels (tiny.first is (4, 3))
    reg = regularizers.create("rp_comhe", proj_dim=10, unprojected="n_input_3").attach(tiny)
    assert _modes(reg)["first"] == "half" and _modes(reg)["small"] == "proj"
    with pytest.raises(ValueError, match="unprojected.*must be one of 'first', 'n_input_3', 'fan_in'"):
        regularizers.create("rp_comhe", unprojected="fanin")


def test_comhe_rules_on_cnn9_wrn_and_gray_input():
    """On CNN-9 every rule gives the unprojected energy to the first conv only (so the released
    rule changes nothing there); on WRN-28-10 the fan-in rule also exempts the first block's 1x1
    shortcut (fan-in 16 <= k = 40), the released rule projects it; on a gray-scale input the
    literal n_input == 3 test would project the first conv as well."""
    import models

    def half(model, **kw):
        return [n for n, m in _modes(regularizers.create("rp_comhe", **kw).attach(model)).items()
                if m == "half"]

    cnn9 = models.create("cnn9", num_classes=100)
    for rule in ("first", "n_input_3", "fan_in"):
        assert half(cnn9, unprojected=rule) == ["features.conv1_1.conv.weight"], rule
    wrn = models.create("wrn28_10", num_classes=100)
    assert half(wrn) == half(wrn, unprojected="n_input_3") == ["conv1.weight"]
    assert half(wrn, **FAN_IN) == ["conv1.weight", "layers.0.0.shortcut.weight"]
    gray = models.create("cnn9", num_classes=10, in_chans=1, width=0.25)
    assert half(gray) == ["features.conv1_1.conv.weight"] and half(gray, unprojected="n_input_3") == []


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
    if name == "weight_decay":  # the optimizer's decay, no penalty: a constant zero
        assert not p.requires_grad and p.item() == 0
        return
    p.backward()
    grads = [q.grad for q in net.parameters() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------
# RP-CoMHE options of the released code: --pnd, and the projections shared by equal seeds.

def released_thomson_project(W, projections):
    """``_add_thomson_project`` (random_projection/architecture.py), float64 numpy, with the
    draws given: for each p (pd1 x pd2): filt = p @ W^T (neurons as columns), concatenate the
    negatives, s=2 energy over the 2N columns, weight 1; averaged over the total_p draws."""
    oldfilt = W.detach().reshape(W.shape[0], -1).numpy().T  # (pd2, n): TF layout
    total_loss = 0.0
    for p in projections:
        filt = p.numpy() @ oldfilt
        filt = np.concatenate((filt, -filt), axis=1)
        n_filt = filt.shape[1]
        filt_norm = np.sqrt(np.sum(filt * filt, axis=0, keepdims=True) + 1e-4)
        inner_pro = (filt.T @ filt) / (filt_norm.T @ filt_norm)
        final = np.power(2.0 - 2.0 * inner_pro + np.diag([1.0] * n_filt), -1.0)
        final = final - np.tril(final)
        total_loss += 1 * np.sum(final) / (n_filt * (n_filt - 1) / 2.0)
    return total_loss / len(projections)


class SharedFanIn(torch.nn.Module):
    """Two projected layers of shape (6, 50), one of shape (4, 50) (same fan-in, other N), one of
    fan-in 8; first and output layers."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        mk = lambda *s: torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
        self.first, self.a, self.b, self.c, self.small, self.out = (
            mk(6, 3), mk(6, 2, 5, 5), mk(6, 50), mk(4, 50), mk(8, 8), mk(3, 6))
        self.weight_roles = {"first": "first", "a": "hidden", "b": "hidden", "c": "hidden",
                             "small": "hidden", "out": "output"}


def _fixed_part(net):
    return hyperspherical_energy(net.first, 2, True) + 10 * hyperspherical_energy(net.out, 2, False)


def test_rp_pnd_gives_n_over_pnd_projections_as_released():
    """--pnd: total_p = oldn_filt / pnd projections (floor: N // pnd); each layer's term is
    _add_thomson_project's with those draws. Draw order: one randn (L, C, k, d) per group."""
    net = SharedFanIn()
    reg = regularizers.create("rp_comhe", proj_dim=10, pnd=4).attach(net, seed=6)
    g = torch.Generator().manual_seed(6)
    shapes = {"ab": (2, 1, 10, 50), "c": (1, 1, 10, 50), "small": (1, 2, 10, 8)}  # 6//4, 4//4, 8//4
    P = {k: torch.randn(*s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    want = (_fixed_part(net).item()
            + released_thomson_project(net.a, P["ab"][0]) + released_thomson_project(net.b, P["ab"][1])
            + released_thomson_project(net.c, P["c"][0]) + released_thomson_project(net.small, P["small"][0]))
    assert reg.penalty().item() == pytest.approx(want, rel=1e-12)
    assert [tuple(reg.projections(gi).shape) for gi, m in enumerate(reg._modes) if m == "proj"] == \
        list(shapes.values())
    with pytest.raises(ValueError, match="layer 'c' has N=4 neurons; pnd=5 gives N // pnd = 0"):
        regularizers.create("rp_comhe", proj_dim=10, pnd=5).attach(net)


def test_rp_shared_projections_reproduce_the_released_seeding():
    """share_projections: every projected layer of fan-in d uses the first C of one (C_max, k, d)
    draw per distinct d (first-seen order), redrawn each step; independent otherwise."""
    net = SharedFanIn()
    reg = regularizers.create("rp_comhe", proj_dim=10, pnd=2, share_projections=True).attach(net, seed=8)
    g = torch.Generator().manual_seed(8)
    for _ in range(2):
        P50 = torch.randn(3, 10, 50, generator=g, dtype=torch.float64)  # C_max = 6 // 2 for d = 50
        P8 = torch.randn(4, 10, 8, generator=g, dtype=torch.float64)    # 8 // 2 for d = 8
        want = (_fixed_part(net).item() + released_thomson_project(net.a, P50)
                + released_thomson_project(net.b, P50) + released_thomson_project(net.c, P50[:2])
                + released_thomson_project(net.small, P8))
        assert reg.penalty().item() == pytest.approx(want, rel=1e-12)
        reg.before_step(0.1)
    assert not any(k.startswith("proj") for k in reg.state_dict())  # draws are not state
    # the default draws every layer's projections independently
    ind = regularizers.create("rp_comhe", proj_dim=10, pnd=2).attach(net, seed=8)
    groups = [ind.projections(gi) for gi, m in enumerate(ind._modes) if m == "proj"]
    assert not torch.equal(groups[0][0, :2], groups[1][0])  # a's first draws are not c's


# --- the projection's own learning rate (proj_lr_scale; issue 28) ---------------------------


@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_proj_lr_scale_is_the_released_step_at_a_scaled_rate(name):
    """P's step size is proj_lr_scale x the network's lr, in the inner SGD steps and in the
    look-ahead: scale s at lr equals the released scale 1 at lr * s (float64: P, penalty and
    the second-order gradient w.r.t. every weight)."""
    lr, s = 1e-3, 100.0
    out = {}
    for scale, rate in ((s, lr), (1.0, lr * s)):
        net = TinyNet()
        reg = regularizers.create(name, proj_dim=10, inner_steps=3, proj_lr_scale=scale).attach(net, seed=2)
        reg.before_step(rate)
        assert reg.proj_lr == pytest.approx(lr * s, rel=1e-15)
        pen = reg.penalty()
        pen.backward()
        out[scale] = (reg.projection("h1").clone(), pen.detach(),
                      [p.grad.clone() for p in (net.first, net.h1, net.h2, net.small, net.out)])
    (Pa, pa, ga), (Pb, pb, gb) = out[s], out[1.0]
    torch.testing.assert_close(Pa, Pb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pa, pb, rtol=1e-12, atol=0)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_proj_lr_scale_default_is_released_and_validated():
    reg = regularizers.create("ap_comhe")
    assert reg.hparams["proj_lr_scale"] == 1.0
    net = TinyNet()
    reg.attach(net).before_step(0.1)
    assert reg.proj_lr == 0.1  # released: plain SGD on P at the network's own lr
    with pytest.raises(ValueError, match="proj_lr_scale"):
        regularizers.create("adv_comhe", proj_lr_scale=-1.0)


def test_second_order_gradient_with_a_scaled_projection_rate_gradcheck():
    """gradcheck (float64) of the penalty w.r.t. a projected weight under proj_lr_scale != 1:
    the look-ahead's second-order term at P's own rate."""
    net = TinyNet()
    reg = regularizers.create("ap_comhe", proj_dim=10, inner_steps=0, proj_lr_scale=50.0).attach(net)
    reg.before_step(0.04)  # P's rate 2.0: the second-order term is visible
    w0 = net.h1.detach().clone()

    others = {n: p.detach() for n, p in net.named_parameters() if n != "h1"}

    def pen(w):
        return reg.penalty_for({"h1": w, **others})

    assert torch.autograd.gradcheck(pen, (w0.requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-5)
