import math

import pytest
import torch

from regularizers import energy as energy_mod
from regularizers import group_energy, hyperspherical_energy, projected_energy
from regularizers.energy import neuron_cosines

from . import _reference as ref

POWERS = [0, 1, 2, "a0", "a1", "a2"]


def _W(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("s", POWERS)
def test_matches_double_loop_reference(s, half):
    W = _W(5, 4) * 0.7
    got = hyperspherical_energy(W, s=s, half_space=half)
    assert got.shape == ()
    assert got.item() == pytest.approx(ref.energy(W.tolist(), s, half), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("half", [False, True])
def test_leading_batch_dims(half):
    W = _W(2, 3, 4, 5)
    got = hyperspherical_energy(W, s="a1", half_space=half)
    want = torch.tensor(ref.batched_energy(W, "a1", half), dtype=torch.float64)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_eps_sits_inside_the_root():
    # two neurons of norm 0.01: with eps inside the root the cosine is 1e-4 / (1e-4 + 1e-4) = 0.5
    W = torch.tensor([[0.01, 0.0], [0.01, 0.0]], dtype=torch.float64)
    assert hyperspherical_energy(W, s=2).item() == pytest.approx(1 / (2 - 2 * 0.5), rel=1e-12)


def test_string_power_and_int_power_agree():
    W = _W(4, 3)
    assert hyperspherical_energy(W, s="2") == hyperspherical_energy(W, s=2)
    assert hyperspherical_energy(W, s="A1") == hyperspherical_energy(W, s="a1")


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("s", [0, 2, "a2"])
def test_chunked_equals_unchunked_values_and_grads(s, half):
    W1 = _W(2, 9, 4).requires_grad_(True)
    W2 = W1.detach().clone().requires_grad_(True)
    e1 = hyperspherical_energy(W1, s, half)
    e2 = hyperspherical_energy(W2, s, half, chunk_size=4)  # blocks 4, 4, 1 (checkpointed)
    torch.testing.assert_close(e1, e2, rtol=1e-12, atol=1e-12)
    e1.sum().backward()
    e2.sum().backward()
    torch.testing.assert_close(W1.grad, W2.grad, rtol=1e-10, atol=1e-12)


def test_auto_chunking_above_threshold(monkeypatch):
    W = _W(11, 3)
    full = hyperspherical_energy(W, 1, True)
    calls = []
    real = energy_mod._block_sum
    monkeypatch.setattr(energy_mod, "_block_sum", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(energy_mod, "AUTO_CHUNK_THRESHOLD", 8)
    monkeypatch.setattr(energy_mod, "_DEFAULT_CHUNK", 4)
    chunked = hyperspherical_energy(W, 1, True)
    assert calls == [4, 4, 3]
    torch.testing.assert_close(full, chunked, rtol=1e-12, atol=0)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("s", POWERS)
def test_gradcheck(s, half):
    W = _W(4, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: hyperspherical_energy(w, s, half), (W,))


@pytest.mark.parametrize("half", [False, True])
def test_gradcheck_projected(half):
    W = _W(4, 5).requires_grad_(True)
    P = _W(2, 3, 5, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, p: projected_energy(w, p, 2, half), (W, P))


@pytest.mark.parametrize("s", POWERS)
def test_invariant_to_rescaling_and_permuting_neurons(s):
    W = _W(6, 4)
    scale = torch.tensor([0.5, 2.0, 3.0, 1.0, 7.0, 0.2], dtype=torch.float64).unsqueeze(-1)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    # eps breaks exact scale invariance; with a negligible eps it is exact
    e = hyperspherical_energy(W, s, eps=1e-14)
    assert hyperspherical_energy(W * scale, s, eps=1e-14).item() == pytest.approx(e.item(), rel=1e-9)
    assert hyperspherical_energy(W[perm], s).item() == pytest.approx(hyperspherical_energy(W, s).item(), rel=1e-12)


@pytest.mark.parametrize("s", POWERS)
def test_half_space_invariant_to_sign_flips(s):
    W = _W(5, 3)
    flipped = W * torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64).unsqueeze(-1)
    a, b = hyperspherical_energy(W, s, True), hyperspherical_energy(flipped, s, True)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)
    # ... whereas full-space energy sees the flip (the test would catch a half-space no-op)
    assert abs(hyperspherical_energy(flipped, s).item() - hyperspherical_energy(W, s).item()) > 1e-8


def _descend_on_sphere(X, s, steps, lr):
    X = X / X.norm(dim=-1, keepdim=True)
    for _ in range(steps):
        X.requires_grad_(True)
        (g,) = torch.autograd.grad(hyperspherical_energy(X, s), X)
        with torch.no_grad():
            X = X - lr * g
            X = X / X.norm(dim=-1, keepdim=True)
    return X.detach()


def test_thomson_four_points_reach_tetrahedron():
    X = _descend_on_sphere(_W(4, 3, seed=3), s=1, steps=400, lr=0.2)
    dist = torch.cdist(X, X)
    iu = torch.triu_indices(4, 4, 1)
    assert (1 / dist[iu[0], iu[1]]).sum().item() == pytest.approx(3.674234614, abs=1e-6)
    # our energy is the mean over the 6 pairs, with eps in the norms: compare to the exact solid
    tetra = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3)
    want = hyperspherical_energy(tetra, 1).item()
    assert want == pytest.approx(3.674234614 / 6, rel=1e-4)
    assert hyperspherical_energy(X, 1).item() == pytest.approx(want, rel=1e-9)


def test_two_points_become_antipodal():
    X = _descend_on_sphere(_W(2, 3, seed=4), s=2, steps=200, lr=0.5)
    assert (X[0] @ X[1]).item() == pytest.approx(-1.0, abs=1e-8)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("s", POWERS)
def test_coincident_and_antipodal_neurons_are_finite_in_float32(s, half):
    W = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [-3.0, 0, 0], [0, 1e3, 0], [0, 1e3, 0]],
                     dtype=torch.float32, requires_grad=True)
    e = hyperspherical_energy(W, s, half)
    e.backward()
    assert torch.isfinite(e) and torch.isfinite(W.grad).all()


def test_projected_energy_equals_loop_over_projections():
    W, P = _W(3, 5, 8), _W(4, 3, 8, seed=1)
    got = projected_energy(W, P, s=1, half_space=True)
    want = torch.stack([torch.stack([hyperspherical_energy(w @ p.T, 1, True) for p in P]).mean()
                        for w in W])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert projected_energy(W, P[0]).shape == (3,)
    torch.testing.assert_close(projected_energy(W, P[0]), projected_energy(W, P[:1]))
    # per-layer projections broadcast against stacked layers
    Pl = _W(3, 2, 4, 8, seed=2)
    got = projected_energy(W, Pl, 2, False)
    want = torch.stack([projected_energy(W[i], Pl[i], 2, False) for i in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_random_projections_preserve_cosines_on_average():
    # Johnson-Lindenstrauss: the projected cosine, averaged over Gaussian projections, tracks the original
    W = _W(6, 200)
    P = torch.randn(400, 50, 200, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    mean_cos = neuron_cosines(W.unsqueeze(0) @ P.transpose(-1, -2)).mean(0)
    assert (mean_cos - neuron_cosines(W)).abs().max().item() < 0.03


def test_group_energy_is_mean_over_coordinate_groups():
    W = _W(2, 5, 12)
    got = group_energy(W, 3, s=2, half_space=True)
    want = torch.stack([hyperspherical_energy(W[..., 4 * g:4 * g + 4], 2, True) for g in range(3)]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("call, match", [
    (lambda: hyperspherical_energy(torch.ones(3)), "ndim"),
    (lambda: hyperspherical_energy(torch.ones(1, 3)), "N >= 2"),
    (lambda: hyperspherical_energy(torch.ones(3, 3), s=3), "one of 0, 1, 2"),
    (lambda: hyperspherical_energy(torch.ones(3, 3), s=True), "one of 0, 1, 2"),
    (lambda: hyperspherical_energy(torch.ones(3, 3), s="a3"), "one of 0, 1, 2"),
    (lambda: hyperspherical_energy(torch.ones(3, 3), eps=0.0), "eps"),
    (lambda: hyperspherical_energy(torch.ones(3, 3), chunk_size=0), "chunk_size"),
    (lambda: hyperspherical_energy(torch.ones(3, 3, dtype=torch.int64)), "floating"),
    (lambda: projected_energy(torch.ones(3, 4), torch.ones(2, 5)), "fan-in d=4"),
    (lambda: projected_energy(torch.ones(3, 4), torch.ones(4)), r"\(k, d\)"),
    (lambda: group_energy(torch.ones(3, 4), 3), "dividing"),
])
def test_bad_input_raises_one_clear_line(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
