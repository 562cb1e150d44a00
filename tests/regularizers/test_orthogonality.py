import pytest
import torch
from torch import nn

import regularizers


class TwoLayers(nn.Module):
    """One wide layer (N=3 < d=8) and one tall conv layer (N=6 > d=2*1*2=4)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wide = nn.Parameter(0.5 * torch.randn(3, 8, generator=g, dtype=torch.float64))
        # near-orthonormal columns: |eig(W^T W) - 1| < 1, so the wrong side (eigenvalue -1) differs
        q = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=torch.float64))[0]
        q = 0.9 * q + 0.05 * torch.randn(6, 4, generator=g, dtype=torch.float64)
        self.tall = nn.Parameter(q.reshape(6, 2, 1, 2))
        self.weight_roles = {"wide": "first", "tall": "output"}


def _mats(net):
    return [net.wide.detach(), net.tall.detach().reshape(6, 4)]


def _loop_gram(W, side):
    """Gram by explicit dot products: side 'rows' -> <w_i, w_j>, 'cols' -> <w^(a), w^(b)>."""
    vecs = list(W) if side == "rows" else list(W.T)
    return torch.tensor([[float(a @ b) for b in vecs] for a in vecs], dtype=torch.float64)


def _small(W):
    return _loop_gram(W, "rows" if W.shape[0] <= W.shape[1] else "cols")


def test_so_dso_mc_match_matrix_definitions():
    net = TwoLayers()
    s = 0.3
    so = sum(((_small(W) - torch.eye(min(W.shape))) ** 2).sum() for W in _mats(net))
    dso = sum(((_loop_gram(W, side) - torch.eye(_loop_gram(W, side).shape[0])) ** 2).sum()
              for W in _mats(net) for side in ("rows", "cols"))
    mc = sum(max(abs(G[i, j]) for i in range(G.shape[0]) for j in range(G.shape[0]) if i != j)
             for G in map(_small, _mats(net)))
    for name, want in [("so", so), ("dso", dso), ("mc", mc)]:
        got = regularizers.create(name, strength=s).attach(net).penalty()
        assert got.item() == pytest.approx(s * float(want), rel=1e-12), name


def test_srip_converges_to_the_exact_spectral_norm_of_the_smaller_side():
    net = TwoLayers()
    reg = regularizers.create("srip", strength=1.0, power_iters=1).attach(net)
    exact = [torch.linalg.matrix_norm(_small(W) - torch.eye(min(W.shape)), ord=2) for W in _mats(net)]
    first = reg.penalty().item()
    for _ in range(300):  # vectors are kept between steps: one iteration per call converges
        value = reg.penalty()
    assert value.item() == pytest.approx(float(sum(exact)), rel=1e-8)
    assert first != pytest.approx(value.item(), rel=1e-6)
    # the wrong side (W W^T for the tall layer) has an extra eigenvalue -1 and a different norm
    tall = _mats(net)[1]
    wrong = torch.linalg.matrix_norm(tall @ tall.T - torch.eye(6), ord=2)
    assert abs(wrong - exact[1]) > 0.1
    # gradient through the final norm equals the gradient of the exact spectral norm
    value.backward()
    Wt = net.tall.detach().clone().requires_grad_(True)
    M = Wt.reshape(6, 4)
    torch.linalg.matrix_norm(M.T @ M - torch.eye(4, dtype=torch.float64), ord=2).backward()
    torch.testing.assert_close(net.tall.grad, Wt.grad, rtol=1e-6, atol=1e-9)


def test_srip_vectors_are_in_the_state_dict():
    net = TwoLayers()
    a = regularizers.create("srip").attach(net)
    a.penalty()
    sd = a.state_dict()
    assert {"v0", "v1"} <= set(sd)
    b = regularizers.create("srip").attach(net, seed=7)
    b.load_state_dict(sd)
    assert b.penalty() == a.penalty()


def test_weight_decay_penalty_is_zero_on_the_weights_device():
    p = regularizers.create("weight_decay").attach(TwoLayers()).penalty()
    assert p.shape == () and p.item() == 0.0 and p.dtype == torch.float64
