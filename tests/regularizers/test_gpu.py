"""CUDA checks (skipped without a GPU): every regularizer runs on the device, stays there, and the
kernel agrees with the CPU."""

import pytest
import torch

import regularizers
from regularizers import hyperspherical_energy, projected_energy

from .conftest import TinyNet

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("s", [0, 1, 2, "a0", "a1", "a2"])
def test_energy_cuda_matches_cpu(s, half):
    W = torch.randn(3, 40, 20, dtype=torch.float64)
    torch.testing.assert_close(hyperspherical_energy(W.cuda(), s, half).cpu(),
                               hyperspherical_energy(W, s, half), rtol=1e-10, atol=1e-12)
    P = torch.randn(4, 5, 20, dtype=torch.float64)
    torch.testing.assert_close(projected_energy(W.cuda(), P.cuda(), s, half).cpu(),
                               projected_energy(W, P, s, half), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", regularizers.available())
def test_every_regularizer_on_cuda(name):
    net = TinyNet(dtype=torch.float32).cuda()
    kw = {"groups": 2} if name == "g_comhe" else {}
    reg = regularizers.create(name, **kw).attach(net, seed=1)
    reg.before_step(0.1)
    p = reg.penalty()
    assert p.device.type == "cuda" and p.shape == () and torch.isfinite(p)
    sd = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in reg.state_dict().items()}
    reg.before_step(0.1)
    want = reg.penalty()
    other = regularizers.create(name, **kw).attach(net, seed=2)
    other.load_state_dict(sd)
    other.before_step(0.1)
    torch.testing.assert_close(other.penalty(), want)
