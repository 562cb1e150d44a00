"""Compressive MHE (Lin, Liu et al., CVPR 2020): RP-, AP-, Adv- and G-CoMHE (recipe.md section 3).

Released code: github.com/rmlin/CoMHE, ``{random,angle,adversarial}_projection/architecture.py``
(``VGG._conv_layer``, ``_add_thomson_first``, ``_add_thomson_project``, ``_add_thomson_final``).
Common rules:

* UNPROJECTED half-space s=2 energy, weight ``strength`` (1), for the layers the
  ``unprojected`` rule picks. Default ``"first"``: the network's first layer only. The released
  ``_conv_layer`` tests ``n_input == 3`` (the layer fed by the RGB image), which on every RGB
  model is the first layer and nothing else; ``"n_input_3"`` is that test literally (a layer
  whose weight has 3 input channels, ``weight.shape[1] == 3``; it differs on a gray-scale input,
  whose first layer the literal test would project); ``"fan_in"`` is this project's earlier rule
  (the first layer and any layer with fan-in d <= proj_dim, e.g. a WRN 1x1 shortcut);
* output (classifier) layer: unprojected FULL-space s=2 energy, weight ``output_strength`` (10);
* every other ("projected") layer: half-space s=2 energy of z_i = P w_i, weight ``strength``.

penalty = sum over layers of weight * energy. Layers of equal shape and treatment are stacked and
go through one kernel call; the C projections of a layer go through one batched matmul.

Learned projections (AP, Adv) are buffers, not parameters: the network's optimiser and weight
decay never see them, and they go into the regularizer's state dict. Their inner updates run in
``before_step(lr)`` with the network frozen (W detached). In ``penalty()`` the network's energy
uses the one-step look-ahead P' = P - lr * grad_P p_loss(P, W), kept in the autograd graph so the
gradient reaches W through grad_P as well (second order, the released code's behaviour:
``angle_projection/architecture.py`` ``_add_thomson_project``, ``p = p - lr * tf.gradients(p_loss,
p)[0]`` inside the network's graph; our default; ``first_order=True`` detaches it). P's step
size, in the inner steps and the look-ahead, is ``proj_lr_scale`` x the network's lr (1 as
released: ``train.py``, ``GradientDescentOptimizer(lr_)``; see docs/regularizers.md for Adam).

Both gradients w.r.t. P (the inner steps, :meth:`_LearnedProjection.inner_update`, and the
look-ahead, :meth:`_LearnedProjection.look_ahead`) go through :func:`grad_p`: pure tensor
functions, taken with ``torch.func.grad`` while ``torch.compile`` traces them (dynamo breaks the
graph at ``torch.autograd.grad``) and with ``torch.autograd.grad`` eagerly (cheaper there). Either
way W, closed over, stays differentiable, which is the second-order term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import HParam, Regularizer
from .energy import group_energy, hyperspherical_energy, neuron_cosines, projected_energy
from .registry import register

__all__ = ["RPCoMHE", "APCoMHE", "AdvCoMHE", "GCoMHE", "ap_p_loss", "adv_p_loss", "P_L2",
           "UNPROJECTED_RULES"]

#: The tiny L2 on learned projections in the released code: 1e-3 * 5e-4 * ||P||^2 / 2.
P_L2 = 1e-3 * 5e-4

_COMMON = {
    "strength": HParam(1.0, "float", 0.0, "weight of first/hidden layer energies"),
    "output_strength": HParam(10.0, "float", 0.0, "weight of the classifier's full-space energy"),
}
#: Rules for which non-classifier layers get the unprojected half-space energy (module docstring).
UNPROJECTED_RULES = ("first", "n_input_3", "fan_in")


def ap_p_loss(W: Tensor, P: Tensor, eps: float = 1e-4) -> Tensor:
    """AP-CoMHE projection loss, to MINIMISE over P. W (..., N, d), P (..., k, d) -> (...).

    ||cos(W P^T) - cos(W)||_F (Frobenius norm, not squared; cosines eps-normalised like the
    energy) + P_L2 * ||P||^2 / 2. The norm is floored at the smallest normal number so its
    gradient stays finite when the distortion is exactly zero.
    """
    diff = neuron_cosines(W @ P.transpose(-1, -2), eps) - neuron_cosines(W, eps)
    fro = diff.square().sum((-2, -1)).clamp_min(torch.finfo(W.dtype).tiny).sqrt()
    return fro + P_L2 * P.square().sum((-2, -1)) / 2


def adv_p_loss(W: Tensor, P: Tensor, eps: float = 1e-4, chunk_size: int | None = None) -> Tensor:
    """Adv-CoMHE projection loss, to MINIMISE over P (= maximise the projected FULL-space s=2
    energy, with the same tiny L2). W (..., N, d), P (..., k, d) -> (...). chunk_size: as in
    :func:`hyperspherical_energy` (the regularizer passes N, see ``AdvCoMHE._p_loss``)."""
    energy = hyperspherical_energy(W @ P.transpose(-1, -2), 2, half_space=False, eps=eps,
                                   chunk_size=chunk_size)
    return -energy + P_L2 * P.square().sum((-2, -1)) / 2


def grad_p(p_loss, W: Tensor, P: Tensor) -> Tensor:
    """grad_P of p_loss(W, P).sum(), same shape as P: a pure function (``torch.func.grad`` while
    torch.compile traces, where ``torch.autograd.grad`` would break the graph; autograd eager).

    Summing over the stacked layers is exact: each P[l] only enters its own layer's term. W is
    closed over, so ordinary autograd still sees the result as a function of W when W requires
    grad (second order); pass W detached for a constant. The transform ignores an outer
    ``torch.no_grad()`` (it always differentiates w.r.t. P), which the evaluation path relies on.
    """
    if torch.compiler.is_compiling():
        return torch.func.grad(lambda P_: p_loss(W, P_).sum())(P)
    # Eager, the same gradient through plain autograd: torch.func's dispatch costs ~1-2 ms per
    # call on the CPU, which Adv's 10 inner steps pay 11 times a step. create_graph keeps the
    # result differentiable w.r.t. W exactly when W requires grad (the second-order case).
    with torch.enable_grad():
        P_ = P.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(p_loss(W, P_).sum(), P_, create_graph=W.requires_grad)
    return g if W.requires_grad else g.detach()


class _CoMHEBase(Regularizer):
    """Shared layer treatment; subclasses implement ``_setup_projected`` and ``_projected``."""

    HPARAMS = {**_COMMON, "proj_dim": HParam(30, "int", 1, "k, rows of each projection"),
               "unprojected": HParam("first", "choice", doc="which layers get the unprojected "
                                     "half-space energy: 'first' (the released n_input == 3 rule on "
                                     "RGB models), 'n_input_3' (that test literally), 'fan_in' "
                                     "(first, or fan-in <= proj_dim: this project's earlier rule)",
                                     choices=UNPROJECTED_RULES)}

    def _mode(self, role: str, p: Tensor) -> str:
        """"full", "half" or "proj" for a weight of this role (p: the weight, (N, C_in, ...))."""
        if role == "output":
            return "full"
        rule = self.hparams["unprojected"]
        if rule == "n_input_3":
            unprojected = p.shape[1] == 3
        else:
            unprojected = role == "first" or (rule == "fan_in" and p[0].numel() <= self.hparams["proj_dim"])
        return "half" if unprojected else "proj"

    def setup(self, device) -> None:
        modes = [self._mode(role, p) for _, p, role in self.layers]
        self._groups = self.group_layers(modes)
        self._modes = [modes[g[0]] for g in self._groups]
        for gi, (index, mode) in enumerate(zip(self._groups, self._modes)):
            if mode == "proj":
                self._setup_projected(gi, index, device)

    def _setup_projected(self, gi: int, index: list[int], device) -> None:
        pass

    def _projected(self, gi: int, W: Tensor) -> Tensor:
        """Energy of the stacked layers W (L, N, d) of projected group gi -> (L,)."""
        raise NotImplementedError

    def penalty(self) -> Tensor:
        self.require_attached()
        hp = self.hparams
        total = self.zero()
        for gi, (index, mode) in enumerate(zip(self._groups, self._modes)):
            W = self.stack(index)
            if mode == "full":
                total = total + hp["output_strength"] * hyperspherical_energy(W, 2, False).sum()
            elif mode == "half":
                total = total + hp["strength"] * hyperspherical_energy(W, 2, True).sum()
            else:
                total = total + hp["strength"] * self._projected(gi, W).sum()
        return total


@register
class RPCoMHE(_CoMHEBase):
    """Random projections, i.i.d. N(0, 1), redrawn once per training iteration.

    C projections per layer: ``num_projections`` (the released ``--pn``, 20), or, when ``pnd`` > 0,
    N // pnd for a layer of N neurons (the released ``--pnd``, "p number divider":
    ``total_p = oldn_filt / pnd`` in ``_add_thomson_project``; that line is integer division
    only under Python 2, the released code's stated Python 3.6 makes it a float that ``range``
    rejects, so ``--pnd`` as released does not run; we take the floor). A layer with N < pnd
    fails at attach (the released code would divide by zero projections).

    The draw happens in ``before_step`` (and once at attach), not in ``penalty()``: the
    penalty is then a pure function of the weights and the current projections, which is what
    lets the engine compile it or capture the whole step in a CUDA graph, and ``penalty()`` may
    be called any number of times per iteration. Draws come from the regularizer's own
    generator (seeded in attach), in group order, one ``randn`` of shape (L, C, k, d) per
    projected group, into a preallocated buffer (no allocation in the hot path).

    ``share_projections=True`` reproduces the released code's sharing instead: its
    ``tf.random_normal(..., seed=n_input + i)`` gives every layer with the same number of input
    channels identically seeded ops, run in lockstep, so layers of equal projection shape (k, d)
    draw the SAME projections each step (on CNN-9, released names: conv1_1, conv1_2 and conv2_0,
    d = 576; conv2_1, conv2_2 and conv3_0, d = 1152; conv3_1 and conv3_2, d = 2304). With it,
    one ``randn`` of shape (C_max, k, d) per distinct fan-in d is drawn (in order of first
    appearance) and every
    projected layer of that fan-in uses its first C projections (projection i has seed
    n_input + i in the released code, whatever the layer's C). Not reproduced: any relation
    between the released draws of equal seeds and different shapes (fc6, n_input 256 and
    d = 4096, shares its seeds with conv3_1/conv3_2). The default (False) draws independently
    per layer (recipe.md §3: the sharing is an artefact of TF seeding, not part of the method).
    """

    name = "rp_comhe"
    capturable_before_step = False  # draws from its own generator: eager, outside the graph
    HPARAMS = {**_CoMHEBase.HPARAMS,
               "proj_dim": HParam(40, "int", 1, "k, rows of each projection"),
               "num_projections": HParam(20, "int", 1, "C, projections averaged per layer (--pn)"),
               "pnd": HParam(0, "int", 0, "0: C = num_projections; > 0: C = N // pnd per layer (--pnd)"),
               "share_projections": HParam(False, "bool", doc="layers of equal fan-in share the "
                                           "projections each step, as the released seeding does")}

    def _num_projections(self, n_neurons: int, layer: str) -> int:
        pnd = self.hparams["pnd"]
        if pnd == 0:
            return self.hparams["num_projections"]
        if n_neurons < pnd:
            raise ValueError(f"rp_comhe: layer {layer!r} has N={n_neurons} neurons; pnd={pnd} gives "
                             f"N // pnd = 0 projections (need pnd <= N)")
        return n_neurons // pnd

    def setup(self, device) -> None:
        self._shared: dict[int, str] = {}  # fan-in d -> buffer name (share_projections)
        self._group_c: dict[int, int] = {}  # projected group -> C
        super().setup(device)
        for name in self._shared.values():  # shared draws: one per fan-in, first-seen order
            self._draw_buffer(name)

    def _setup_projected(self, gi, index, device):
        name, p, _ = self.layers[index[0]]
        C = self._num_projections(p.shape[0], name)
        self._group_c[gi] = C
        k, d = self.hparams["proj_dim"], p[0].numel()
        if not self.hparams["share_projections"]:
            # the generator state, not the draws, is the checkpointed state: non-persistent buffer
            self.register_buffer(f"proj{gi}", torch.empty((len(index), C, k, d), device=device,
                                                          dtype=p.dtype), persistent=False)
            self._draw_buffer(f"proj{gi}")
            return
        buf = self._shared.setdefault(d, f"proj_d{d}")
        old = getattr(self, buf, None)
        if old is None or old.shape[0] < C:
            self.register_buffer(buf, torch.empty((C, k, d), device=device, dtype=p.dtype),
                                 persistent=False)

    def _draw_buffer(self, name: str) -> None:
        P = getattr(self, name)
        torch.randn(P.shape, generator=self.generator, out=P)

    def before_step(self, lr: float) -> None:
        """Fresh projections for this iteration."""
        super().before_step(lr)
        if self.hparams["share_projections"]:
            for name in self._shared.values():
                self._draw_buffer(name)
            return
        for gi, mode in enumerate(self._modes):
            if mode == "proj":
                self._draw_buffer(f"proj{gi}")

    def projections(self, gi: int) -> Tensor:
        """The current projections of projected group gi: (L, C, k, d), or (C, k, d) shared by the
        group's layers (``share_projections``)."""
        if not self.hparams["share_projections"]:
            return getattr(self, f"proj{gi}")
        d = self.layers[self._groups[gi][0]][1][0].numel()
        return getattr(self, self._shared[d])[: self._group_c[gi]]

    def _projected(self, gi, W):
        return projected_energy(W, self.projections(gi), 2, half_space=True)


class _LearnedProjection(_CoMHEBase):
    """One learned P (k x d) per projected layer, stacked per group as buffer ``P<gi>`` (L, k, d)."""

    HPARAMS = {**_CoMHEBase.HPARAMS,
               "inner_steps": HParam(1, "int", 0, "SGD steps on P per iteration, at the projection lr"),
               "first_order": HParam(False, "bool", doc="detach the look-ahead (default: second order)"),
               "proj_lr_scale": HParam(1.0, "float", 0.0, "P's step size (inner steps and look-ahead) = "
                                       "proj_lr_scale x the network's current lr; 1 = as released "
                                       "(train.py: updatep_op at lr_); Adam protocols: 0.1 / base lr",
                                       added=True)}

    @staticmethod
    def _p_loss(W: Tensor, P: Tensor) -> Tensor:  # (L, N, d), (L, k, d) -> (L,)
        raise NotImplementedError

    def _setup_projected(self, gi, index, device):
        p = self.layers[index[0]][1]
        shape = (len(index), self.hparams["proj_dim"], p[0].numel())
        self.register_buffer(f"P{gi}", torch.randn(shape, generator=self.generator, device=device,
                                                   dtype=p.dtype))

    def projection(self, layer: str) -> Tensor:
        """The current learned P (k, d) of a projected layer (a view of its group's buffer)."""
        self.require_attached()
        for gi, (index, mode) in enumerate(zip(self._groups, self._modes)):
            for pos, i in enumerate(index):
                if mode == "proj" and self.layers[i][0] == layer:
                    return getattr(self, f"P{gi}")[pos]
        projected = [self.layers[i][0] for g, m in zip(self._groups, self._modes) if m == "proj" for i in g]
        raise ValueError(f"{self.name}: {layer!r} is not a projected layer (projected: {', '.join(projected)})")

    def p_loss(self) -> Tensor:
        """Current total projection loss (sum over projected layers), for monitoring and tests."""
        self.require_attached()
        total = self.zero()
        for gi, (index, mode) in enumerate(zip(self._groups, self._modes)):
            if mode == "proj":
                total = total + self._p_loss(self.stack(index), getattr(self, f"P{gi}")).sum()
        return total

    def inner_update(self, W: Tensor, P: Tensor, lr) -> Tensor:
        """P after ``inner_steps`` plain-SGD steps on p_loss at step size lr (P's: the network's
        lr x ``proj_lr_scale``, see :attr:`proj_lr`), network frozen.

        Pure: (W (L, N, d), P (L, k, d), lr float or 0-dim tensor) -> new P (L, k, d), no grad
        history, inputs untouched; what ``before_step`` writes into the buffers, and what a
        compiled step may call directly (a Python loop of fixed length: unrolled when traced).
        """
        W, P = W.detach(), P.detach()
        for _ in range(self.hparams["inner_steps"]):
            P = P - lr * grad_p(self._p_loss, W, P)
        return P

    def look_ahead(self, W: Tensor, P: Tensor, lr) -> Tensor:
        """The network's projection P' = P - lr * grad_P p_loss(W, P) (L, k, d).

        While autograd records and ``first_order`` is off, P' is a differentiable function of W
        (second order); otherwise (first order, or evaluation under no_grad) it is a constant
        and the gradient is taken against W detached (same value, no graph through W kept).

        Known deviation (this project's, not yet changed): the released look-ahead
        (``_add_thomson_project``: ``p - lr * tf.gradients(p_loss, p)``, ``+`` for Adv) takes the
        gradient of the objective WITHOUT the tiny L2 that only the inner steps' loss carries
        (``train.py``: ``ploss_op += 1e-3 * preg_loss``); ours includes it, so P' differs by
        lr * P_L2 * P (relative 5e-8 at lr 0.1).
        """
        second = torch.is_grad_enabled() and not self.hparams["first_order"]
        P = P.detach()
        P_next = P - lr * grad_p(self._p_loss, W if second else W.detach(), P)
        return P_next if second else P_next.detach()

    @property
    def proj_lr(self) -> float:
        """P's step size this iteration: ``proj_lr_scale`` x the network's lr from before_step.
        The released code steps P by plain SGD at the network's own rate (``train.py``:
        ``GradientDescentOptimizer(lr_)``, scale 1), 0.1 at the start of its SGD recipe; under
        Adam at 1e-3 that rate leaves P almost where it started, hence the scale (docs)."""
        return self.hparams["proj_lr_scale"] * self.lr

    def before_step(self, lr: float) -> None:
        """Inner plain-SGD steps on every P at the projection lr, network frozen, in place."""
        super().before_step(lr)
        if self.hparams["inner_steps"] == 0:
            return
        for gi, (index, mode) in enumerate(zip(self._groups, self._modes)):
            if mode == "proj":
                buf = getattr(self, f"P{gi}")
                # in place: the buffer's storage (state dict entry, captured graphs) is kept
                buf.copy_(self.inner_update(self.stack(index), buf, self.proj_lr))

    def _projected(self, gi, W):
        P = getattr(self, f"P{gi}")
        if self.proj_lr != 0.0:  # before the first before_step lr is 0 and P' = P
            P = self.look_ahead(W, P, self.proj_lr)
        return projected_energy(W, P.unsqueeze(-3), 2, half_space=True)


@register
class APCoMHE(_LearnedProjection):
    """Angle-preserving learned projection (min over P of the cosine distortion)."""

    name = "ap_comhe"

    @staticmethod
    def _p_loss(W, P):
        return ap_p_loss(W, P)


@register
class AdvCoMHE(_LearnedProjection):
    """Adversarial learned projection: P maximises the projected FULL-space s=2 energy (inner
    gradient ascent); the network minimises the projected HALF-space s=2 energy under the
    look-ahead P' = P + lr * grad_P energy, as released (adversarial_projection/architecture.py,
    ``_add_thomson_project``: ``_stat`` of ``p @ filt`` is full-space, the network's term
    concatenates the negatives)."""

    name = "adv_comhe"
    HPARAMS = {**_LearnedProjection.HPARAMS,
               "inner_steps": HParam(10, "int", 0, "gradient-ascent steps on P per iteration")}

    @staticmethod
    def _p_loss(W, P):
        # one block however many neurons: above 2048 the energy would checkpoint its blocks,
        # and torch.func.grad does not support the saved-tensor hooks checkpointing uses
        return adv_p_loss(W, P, chunk_size=W.shape[-2])


@register
class GCoMHE(_CoMHEBase):
    """Group CoMHE, THIS PROJECT's definition (named by the authors, never released): split a
    projected layer's d input coordinates into ``groups`` contiguous groups (a coordinate-subspace
    projection), half-space s=2 energy inside each group, averaged over groups. The first layer
    is unprojected, the classifier full-space, as for every CoMHE variant."""

    name = "g_comhe"
    HPARAMS = {**_COMMON, "groups": HParam(8, "int", 1, "contiguous coordinate groups, must divide d")}

    def _mode(self, role, p):
        if role == "output":
            return "full"
        return "half" if role == "first" else "proj"

    def check_layers(self, layers) -> None:
        G = self.hparams["groups"]
        for name, p, role in layers:
            d = p[0].numel()
            if self._mode(role, p) == "proj" and (d % G or d // G < 2):
                raise ValueError(f"g_comhe: layer {name!r} has fan-in d={d}; groups={G} must divide d "
                                 f"with at least 2 coordinates per group")

    def _projected(self, gi, W):
        return group_energy(W, self.hparams["groups"], 2, half_space=True)
