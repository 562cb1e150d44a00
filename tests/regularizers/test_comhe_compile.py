"""AP-/Adv-CoMHE take their gradients w.r.t. P with torch.func (issue 7), so torch.compile can
trace them without graph breaks.

1. Equivalence (float64, eager): the torch.func code gives the values, the updated projections
   and the gradients w.r.t. the network of the former ``torch.autograd.grad`` formulation, which
   is written out below as the reference.
2. Compilation (float32): ``fullgraph=True`` (which raises on any graph break) of the pure
   functions, of ``penalty()``, and of ``before_step(lr)`` + ``penalty()``; compiled values and
   gradients match eager. Backend "aot_eager" (dynamo + AOTAutograd, a few seconds per graph on
   this 2-core CPU); one "inductor" check (25-55 s with a cold cache) is marked slow.

``python -m tests.regularizers.test_comhe_compile [reps] [threads]`` times the eager step, new
against former code, on the CNN-9 weights (docs/regularizers.md quotes it).
"""

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

import regularizers
from regularizers import energy
from regularizers.base import Regularizer
from regularizers.comhe import AdvCoMHE, APCoMHE, adv_p_loss, ap_p_loss
from regularizers.energy import projected_energy

from .conftest import TinyNet

CLASSES = {"ap_comhe": APCoMHE, "adv_comhe": AdvCoMHE}


# ----------------------------------------------------------------- the former formulation
class _AutogradGrad:
    """The code before issue 7, verbatim in substance: ``torch.autograd.grad`` on a detached
    leaf P, in place ``sub_`` per inner step, create_graph for the second-order look-ahead."""

    def before_step(self, lr):
        Regularizer.before_step(self, lr)  # stores lr only (skips the new inner steps)
        for gi, (index, mode) in enumerate(zip(self._groups, self._modes)):
            if mode != "proj":
                continue
            W = self.stack(index).detach()
            buf = getattr(self, f"P{gi}")
            for _ in range(self.hparams["inner_steps"]):
                with torch.enable_grad():
                    P = buf.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(self._p_loss(W, P).sum(), P)
                buf.sub_(self.lr * g)

    def _projected(self, gi, W):
        P = getattr(self, f"P{gi}")
        if self.lr != 0.0 and torch.is_grad_enabled():
            P0 = P.detach().requires_grad_(True)
            second = not self.hparams["first_order"]
            (g,) = torch.autograd.grad(self._p_loss(W, P0).sum(), P0, create_graph=second)
            P = P0 - self.lr * g if second else (P0 - self.lr * g).detach()
        elif self.lr != 0.0:
            with torch.enable_grad():
                P0 = P.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._p_loss(W.detach(), P0).sum(), P0)
            P = P - self.lr * g
        return projected_energy(W, P.unsqueeze(-3), 2, half_space=True)


class _OldAP(_AutogradGrad, APCoMHE):
    pass


class _OldAdv(_AutogradGrad, AdvCoMHE):
    pass


OLD = {"ap_comhe": _OldAP, "adv_comhe": _OldAdv}


def _buffers(reg):
    return {k: v.clone() for k, v in reg.named_buffers()}


def _assert_same(new, old, net, tol):
    """Same projections, penalty value and gradient w.r.t. every weight; same no-grad value."""
    for k, v in _buffers(old).items():
        torch.testing.assert_close(_buffers(new)[k], v, rtol=tol, atol=tol)
    params = list(net.parameters())
    pn, po = new.penalty(), old.penalty()
    torch.testing.assert_close(pn, po, rtol=tol, atol=0)
    for gn, go in zip(torch.autograd.grad(pn, params), torch.autograd.grad(po, params)):
        torch.testing.assert_close(gn, go, rtol=tol, atol=tol)
    with torch.no_grad():  # evaluation: the look-ahead value only
        torch.testing.assert_close(new.penalty(), old.penalty(), rtol=tol, atol=0)


@pytest.mark.parametrize("inner_steps", [0, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_torch_func_matches_autograd_grad_float64(name, first_order, inner_steps):
    net = TinyNet()
    kw = dict(proj_dim=10, inner_steps=inner_steps, first_order=first_order)
    new = CLASSES[name](**kw).attach(net, seed=4)
    old = OLD[name](**kw).attach(net, seed=4)
    _assert_same(new, old, net, 1e-12)  # lr = 0: P' = P
    for lr in (0.3, 0.05):  # two iterations: the projections carry over
        new.before_step(lr)
        old.before_step(lr)
        _assert_same(new, old, net, 1e-12)
    assert new.state_dict().keys() == old.state_dict().keys()


def test_adv_chunked_energy_matches_autograd_grad(monkeypatch):
    # Above AUTO_CHUNK_THRESHOLD neurons the energy checkpoints its row blocks, which
    # torch.func.grad refuses (saved-tensor hooks); Adv's projection loss therefore takes one
    # block. Lowered thresholds put TinyNet's 6 neurons on that path (the network's own
    # projected energy stays chunked and checkpointed).
    monkeypatch.setattr(energy, "AUTO_CHUNK_THRESHOLD", 4)
    monkeypatch.setattr(energy, "_DEFAULT_CHUNK", 4)
    net = TinyNet()
    new = AdvCoMHE(proj_dim=10, inner_steps=2).attach(net, seed=1)
    old = _OldAdv(proj_dim=10, inner_steps=2).attach(net, seed=1)
    new.before_step(0.5)
    old.before_step(0.5)
    _assert_same(new, old, net, 1e-12)  # one block vs two: rounding only


# ----------------------------------------------------------------- compilation
def _compiled(fn, backend):
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def _pure_step(reg, W, P, lr):
    """One iteration of a projected group as pure tensor functions: inner steps, then the
    network's projected energy under the (second-order) look-ahead. lr is a 0-dim tensor."""
    P_new = reg.inner_update(W, P, lr)
    return projected_energy(W, reg.look_ahead(W, P_new, lr).unsqueeze(-3), 2, True).sum(), P_new


def _check_pure_step(name, backend, inner_steps):
    torch._dynamo.reset()
    net = TinyNet(dtype=torch.float32)
    reg = regularizers.create(name, proj_dim=10, inner_steps=inner_steps).attach(net, seed=0)
    gi = reg._modes.index("proj")
    P = getattr(reg, f"P{gi}")
    W = reg.stack(reg._groups[gi])  # h1, h2 stacked: (2, 6, 50), differentiable
    step, counter = _compiled(lambda W, P, lr: _pure_step(reg, W, P, lr), backend)
    for lr in (0.1, 0.3):  # lr as a tensor: a new value is not a new graph
        lr = torch.tensor(lr)
        e, P_new = step(W, P, lr)
        e_ref, P_ref = _pure_step(reg, W, P, lr)
        torch.testing.assert_close(e, e_ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(P_new, P_ref, rtol=1e-5, atol=1e-6)
        g, g_ref = torch.autograd.grad(e, [net.h1, net.h2]), torch.autograd.grad(e_ref, [net.h1, net.h2])
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert counter.frame_count == 1


def test_pure_step_compiles_fullgraph():
    _check_pure_step("ap_comhe", "aot_eager", inner_steps=2)


@pytest.mark.slow
def test_pure_step_compiles_fullgraph_inductor():
    _check_pure_step("adv_comhe", "inductor", inner_steps=1)


def _grads(loss, net):
    return torch.autograd.grad(loss, list(net.parameters()))


def _pair(name, **kw):
    """The same regularizer twice (same seed), on one float32 network: eager and compiled."""
    net = TinyNet(dtype=torch.float32)
    return net, [regularizers.create(name, proj_dim=10, **kw).attach(net, seed=0) for _ in range(2)]


def _assert_close32(pc, pe, net):
    torch.testing.assert_close(pc, pe, rtol=1e-5, atol=0)
    for a, b in zip(_grads(pc, net), _grads(pe, net)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_penalty_compiles_fullgraph(name):
    # what the engine compiles: penalty() (before_step eager), lr read from the module
    torch._dynamo.reset()
    net, (eager, comp) = _pair(name, inner_steps=1)
    penalty, counter = _compiled(comp.penalty, "aot_eager")
    for lr in (0.1, 0.2, 0.2):
        eager.before_step(lr)
        comp.before_step(lr)
        _assert_close32(penalty(), eager.penalty(), net)
    # dynamo specialises the first lr, then makes it symbolic: two graphs, not one per lr
    assert counter.frame_count == 2


def test_before_step_and_penalty_compile_fullgraph():
    # The whole per-iteration path, inner steps included, is one graph too, and the buffers
    # are updated in place as in eager. (The Python float lr that before_step stores on the
    # module is specialised per value, so a training loop with a schedule would recompile
    # every step: compile penalty(), or the pure functions with lr as a tensor, instead.)
    torch._dynamo.reset()
    net, (eager, comp) = _pair("adv_comhe", inner_steps=2)

    def step(lr):
        comp.before_step(lr)
        return comp.penalty()

    step_c, counter = _compiled(step, "aot_eager")
    eager.before_step(0.25)
    pc, pe = step_c(0.25), eager.penalty()
    assert counter.frame_count == 1 and comp.lr == 0.25
    for k, v in _buffers(eager).items():
        torch.testing.assert_close(_buffers(comp)[k], v, rtol=1e-5, atol=1e-6)
    _assert_close32(pc, pe, net)


# ----------------------------------------------------------------- eager cost, old vs new
def _bench(reps: int = 5, threads: int = 1) -> None:
    """Eager before_step(lr) + penalty() forward+backward over the paper CNN-9's weights
    (float32, ``models.create("cnn9", num_classes=100)``): the current code (torch.autograd.grad when eager),
    the current code forced onto its traced path (torch.func.grad, run eagerly), and the former
    autograd.grad code, interleaved in one process; prints the median ms and the ratio."""
    import statistics
    import time
    from unittest import mock

    import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = models.create("cnn9", num_classes=100)
    cases = {}
    for name, steps in (("ap_comhe", 1), ("adv_comhe", 10)):
        for label, cls, func in (("current", CLASSES[name], False), ("torch.func path", CLASSES[name], True),
                                 ("former autograd.grad code", OLD[name], False)):
            cases[f"{name} ({steps} inner), {label}"] = (cls(inner_steps=steps).attach(net, seed=0), func)

    def once(reg, func):
        net.zero_grad(set_to_none=True)
        with mock.patch.object(torch.compiler, "is_compiling", lambda: func):
            t0 = time.perf_counter()
            reg.before_step(0.1)
            reg.penalty().backward()
            return 1e3 * (time.perf_counter() - t0)

    times = {k: [] for k in cases}
    for case in cases.values():
        once(*case)  # warm-up
    for _ in range(reps):
        for k, case in cases.items():
            times[k].append(once(*case))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {reps}")
    print("| CNN-9, eager, before_step + penalty fwd+bwd | ms | / former code |")
    print("|---|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        base = med[k.split(",")[0] + ", former autograd.grad code"]
        print(f"| {k} | {v:.1f} | {v / base:.2f} |")


if __name__ == "__main__":  # python -m tests.regularizers.test_comhe_compile [reps] [threads]
    import sys

    _bench(*(int(a) for a in sys.argv[1:3]))


@pytest.mark.parametrize("p_loss", [ap_p_loss, adv_p_loss])
def test_traced_and_eager_gradients_of_p_agree(p_loss, monkeypatch):
    """``grad_p`` takes torch.func.grad while compiling and torch.autograd.grad eagerly: the
    two must give the same grad_P and the same second-order gradient w.r.t. W (float64)."""
    from regularizers.comhe import grad_p

    gen = torch.Generator().manual_seed(3)
    W = torch.randn(2, 12, 40, generator=gen, dtype=torch.float64, requires_grad=True)
    P = torch.randn(2, 6, 40, generator=gen, dtype=torch.float64)
    R = torch.randn(2, 6, 40, generator=gen, dtype=torch.float64)

    def both():
        g = grad_p(p_loss, W, P)
        (gw,) = torch.autograd.grad((g * R).sum(), W)
        return g.detach(), gw

    eager = both()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = both()
    for a, b in zip(eager, traced):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert eager[1].abs().max() > 0  # the second-order term exists
