"""Baselines: the protocol's weight decay alone, and the orthogonality regularizers of
Bansal, Chen & Wang (NeurIPS 2018, "Can We Gain More from Orthogonality Regularizations in
Training Deep CNNs?"), recipe.md section 7.

For a neuron matrix W (N, d) let G be the Gram matrix of the SMALLER side: W W^T (N x N) when
N <= d, else W^T W (d x d); m = min(N, d). (The released ``l2_reg_ortho`` of
``Wide-Resnet/train_n.py`` makes the same choice: ``W^T W`` when rows > cols, else ``W W^T``;
its copies in ``Imagenet/*/train_n.py`` and ``SVHN/train.py`` differ: they always take
``W^T W`` (d x d) and a sigma from a normal start, ``torch.dot(u, A v)``, squared.)

* SO   = ||G - I||_F^2
* DSO  = ||W W^T - I||_F^2 + ||W^T W - I||_F^2
* MC   = max_{i != j} |G_ij|                  (the largest off-diagonal entry of |G - I|)
* SRIP, by default the released method: VITA-Group/Orthogonality-in-CNNs,
  ``Wide-Resnet/train_n.py``, functions ``l2_reg_ortho`` and ``adjust_ortho_decay_rate``.
  Per layer and per step, A = G - I, a FRESH start vector b with i.i.d. uniform [0, 1) entries
  (``torch.rand``), one power step v = A b / ||A b|| with the gradient flowing through it, and
  the term ||A v||^2 (SQUARED); terms summed over layers, times ``strength`` (their
  ``--ortho-decay`` default 1e-2) times the epoch multiplier of ``adjust_ortho_decay_rate``:
  1 for the 0-based epochs 0..19, 1e-3 from epoch 20, 1e-4 from 50, 1e-6 from 70, 0 from 120
  (the released loop calls it with ``epoch + 1`` and tests ``> 20``, ``> 50``, ``> 70``,
  ``> 120``). The epoch comes from the engine (``set_epoch``: the data stream's epoch, i.e.
  iteration // iterations per epoch of the protocol). ``schedule="scaled"`` (THIS PROJECT's
  option, for protocols much shorter than the released 200 epochs, ``--epochs`` default of
  ``train_n.py``): the same multipliers with the run mapped onto those 200 epochs, recipe epoch
  floor(200 x iteration / iterations) (``set_progress``), so they change at 10 / 25 / 35 / 60 %
  of the run; ``"constant"`` keeps 1.

  THIS PROJECT's earlier variant stays available through explicit hyper-parameters:
  ``squared=False, power_iters=2, persistent_vector=True, schedule="constant"`` (sigma_max(G - I)
  estimated by power iterations whose unit vector is kept between steps, the iterations without
  gradient, the gradient through the final ||A v||; strength constant). Their Keras ResNet
  (``ResNet/resnet_cifar_new.py``) is unsquared too, but that is a different code path; the
  PyTorch one above is the method this suite calls SRIP.

Strength defaults of so/dso/mc (1e-4) are THIS PROJECT's choices; srip's 1e-2 is the released
``--ortho-decay`` default. All layers (every conv/linear weight, the classifier included, as
the released code's ``W.ndimension() >= 2`` loop) use the same strength.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import HParam, Regularizer
from .registry import register

__all__ = ["WeightDecay", "SO", "DSO", "MC", "SRIP", "small_gram", "srip_sigma", "srip_power_term",
           "srip_multiplier", "srip_recipe_epoch", "SRIP_RELEASED_SCHEDULE", "SRIP_RELEASED_EPOCHS",
           "SRIP_SCHEDULES"]


def small_gram(W: Tensor) -> Tensor:
    """Gram of the smaller side. W (..., N, d) -> (..., m, m), m = min(N, d)."""
    Wt = W.transpose(-1, -2)
    return W @ Wt if W.shape[-2] <= W.shape[-1] else Wt @ W


def _minus_eye(G: Tensor) -> Tensor:
    return G - torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)


def srip_sigma(A: Tensor, v: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Power-iteration estimate of the spectral norm of symmetric A (..., m, m) from v (..., m).

    Returns (sigma (...), new unit vector (..., m) detached). ``iters`` no-grad iterations, then
    sigma = ||A v|| with gradient through A only.
    """
    with torch.no_grad():
        Ad = A.detach()
        for _ in range(iters):
            v = (Ad @ v.unsqueeze(-1)).squeeze(-1)
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    sigma = (A @ v.unsqueeze(-1)).squeeze(-1).norm(dim=-1)
    return sigma, v


class _Orthogonality(Regularizer):
    HPARAMS = {"strength": HParam(1e-4, "float", 0.0, "weight of the summed per-layer term")}

    def setup(self, device) -> None:
        # every conv/linear weight, whatever its role; one kernel call per distinct shape
        self._groups = self.group_layers(["all"] * len(self.layers))

    def _layer_terms(self, W: Tensor, gi: int) -> Tensor:  # (L, N, d) -> (L,)
        raise NotImplementedError

    def penalty(self) -> Tensor:
        self.require_attached()
        total = self.zero()
        for gi, index in enumerate(self._groups):
            total = total + self._layer_terms(self.stack(index), gi).sum()
        return self.hparams["strength"] * total


@register
class WeightDecay(Regularizer):
    """The baseline row: no extra term (the protocol's L2 weight decay does the work)."""

    name = "weight_decay"
    HPARAMS = {}

    def penalty(self) -> Tensor:
        self.require_attached()
        return self.zero()


@register
class SO(_Orthogonality):
    name = "so"

    def _layer_terms(self, W, gi):
        return _minus_eye(small_gram(W)).square().sum((-2, -1))


@register
class DSO(_Orthogonality):
    name = "dso"

    def _layer_terms(self, W, gi):
        Wt = W.transpose(-1, -2)
        return (_minus_eye(W @ Wt).square().sum((-2, -1))
                + _minus_eye(Wt @ W).square().sum((-2, -1)))


@register
class MC(_Orthogonality):
    name = "mc"

    def _layer_terms(self, W, gi):
        G = small_gram(W)
        off = 1.0 - torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)  # multiplicative mask
        return (G * off).abs().amax((-2, -1))


#: ``adjust_ortho_decay_rate`` as (first 0-based epoch, multiplier of the strength), latest first.
SRIP_RELEASED_SCHEDULE: tuple[tuple[int, float], ...] = ((120, 0.0), (70, 1e-6), (50, 1e-4), (20, 1e-3))
#: The released recipe's length in epochs (``Wide-Resnet/train_n.py``: ``--epochs`` default 200),
#: onto which schedule "scaled" maps a run.
SRIP_RELEASED_EPOCHS = 200
SRIP_SCHEDULES = ("released", "constant", "scaled")


def srip_multiplier(epoch: int, schedule: str = "released") -> float:
    """The strength multiplier at a 0-based epoch: ``adjust_ortho_decay_rate(epoch + 1) /
    ortho_decay`` for schedule "released", 1 for "constant". (For "scaled" pass the recipe
    epoch of :func:`srip_recipe_epoch`.)"""
    if schedule == "constant":
        return 1.0
    if schedule not in SRIP_SCHEDULES:
        raise ValueError(f"srip schedule must be one of {SRIP_SCHEDULES}; got {schedule!r}")
    for first, mult in SRIP_RELEASED_SCHEDULE:
        if epoch >= first:
            return mult
    return 1.0


def srip_recipe_epoch(iteration: int, iterations: int) -> int:
    """Schedule "scaled": the 0-based epoch of the released 200-epoch recipe that iteration
    ``iteration`` of a run of ``iterations`` maps onto, floor(200 x iteration / iterations). The
    released multipliers then change at 10 %, 25 %, 35 % and 60 % of the run (epochs 20, 50, 70,
    120 of 200), whatever the protocol's epoch length."""
    return SRIP_RELEASED_EPOCHS * int(iteration) // max(1, int(iterations))


def _first_iteration(recipe_epoch: int, iterations: int) -> int:
    """The first iteration i with srip_recipe_epoch(i, iterations) >= recipe_epoch."""
    return -(-recipe_epoch * iterations // SRIP_RELEASED_EPOCHS)


def srip_power_term(A: Tensor, b: Tensor, iters: int = 1, squared: bool = True) -> Tensor:
    """The released SRIP term of symmetric A (..., m, m) from start vectors b (..., m) -> (...).

    ``iters`` power steps v <- A v / ||A v|| from v = b, all differentiable (the released code
    keeps them in the graph), then ||A v||^2 (``squared``) or ||A v||. With iters=1 and squared
    this is ``l2_reg_ortho``'s per-layer term: v1 = A b, v2 = v1 / ||v1||, ||A v2||^2. The norm is
    floored at the smallest normal number (only A b = 0, i.e. an exactly orthogonal layer, reaches
    it; the released code would divide by zero there).
    """
    v = b
    for _ in range(iters):
        v = (A @ v.unsqueeze(-1)).squeeze(-1)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    Av = (A @ v.unsqueeze(-1)).squeeze(-1)
    return Av.square().sum(-1) if squared else Av.norm(dim=-1)


@register
class SRIP(_Orthogonality):
    """SRIP (Bansal et al. 2018), by default as released (see the module docstring): fresh uniform
    start vectors each step, one differentiable power step, squared term, epoch-annealed strength.

    Start vectors are drawn in ``before_step`` from the regularizer's own generator (seeded in
    attach; checkpointed with its state), in group order, one ``torch.rand`` of shape (L, m) per
    group of equal-shape layers, into a preallocated non-persistent buffer ``b<g>``, as RP-CoMHE
    draws its projections; the epoch multiplier is a device scalar updated by ``set_epoch``. So
    ``penalty()`` is a pure function of weights and buffers (compiled, or recorded in the
    whole-step CUDA graph), and ``before_step`` runs eagerly (``capturable_before_step = False``).

    ``persistent_vector=True`` is this project's variant instead: one unit vector per layer kept
    between steps (buffer ``v<g>``, in the state dict), ``power_iters`` no-grad iterations per
    penalty call, the gradient through the final ||A v|| only.
    """

    name = "srip"
    capturable_before_step = False  # draws start vectors from its own generator
    HPARAMS = {
        "strength": HParam(1e-2, "float", 0.0, "weight of the summed per-layer term "
                           "(released --ortho-decay default)"),
        "squared": HParam(True, "bool", doc="||A v||^2 as released (False: ||A v||, this project's variant)"),
        "power_iters": HParam(1, "int", 1, "power steps per penalty (released: 1)"),
        "persistent_vector": HParam(False, "bool", doc="keep the vector between steps, no-grad "
                                    "iterations (this project's variant); False: fresh torch.rand "
                                    "start each step, gradient through the power step (released)"),
        "schedule": HParam("released", "choice", doc="strength multiplier: 'released' "
                           "(adjust_ortho_decay_rate by the protocol's epoch), 'constant', or 'scaled' "
                           "(the released one with the run mapped onto its 200 epochs)",
                           choices=SRIP_SCHEDULES),
    }

    def setup(self, device) -> None:
        super().setup(device)
        p0 = self.layers[0][1]
        self._mult_host = self._multiplier()
        self.register_buffer("decay", torch.full((), self._mult_host, device=device, dtype=p0.dtype),
                             persistent=False)
        for gi, index in enumerate(self._groups):
            p = self.layers[index[0]][1]
            m = min(p.shape[0], p[0].numel())
            if self.hparams["persistent_vector"]:
                v = torch.randn(len(index), m, generator=self.generator, device=device, dtype=p.dtype)
                self.register_buffer(f"v{gi}", v / v.norm(dim=-1, keepdim=True))
            else:
                # the generator state, not the draws, is the checkpointed state
                self.register_buffer(f"b{gi}", torch.empty(len(index), m, device=device, dtype=p.dtype),
                                     persistent=False)
        self._draw()

    def _draw(self) -> None:
        if self.hparams["persistent_vector"]:
            return
        for gi in range(len(self._groups)):
            b = getattr(self, f"b{gi}")
            torch.rand(b.shape, generator=self.generator, out=b)

    def _multiplier(self) -> float:
        schedule = self.hparams["schedule"]
        if schedule == "scaled":
            if self.iterations is None:  # no set_progress yet: the start of a run
                return 1.0
            return srip_multiplier(srip_recipe_epoch(self.iteration, self.iterations), schedule)
        return srip_multiplier(self.epoch, schedule)

    def _update_decay(self) -> None:
        if self.layers:
            mult = self._multiplier()
            if mult != self._mult_host:
                self.decay.fill_(mult)
                self._mult_host = mult

    def set_epoch(self, epoch: int) -> None:
        """Store the epoch and set the strength multiplier of the schedule (a device scalar,
        written only when it changes: five times in a released-schedule run)."""
        super().set_epoch(epoch)
        self._update_decay()

    def set_progress(self, iteration: int, iterations: int) -> None:
        """Store the iteration and run length; schedule "scaled" sets its multiplier here."""
        super().set_progress(iteration, iterations)
        self._update_decay()

    def epoch_schedule(self, iterations_per_epoch: int, iterations: int) -> list[dict]:
        schedule = self.hparams["schedule"]
        if schedule == "constant":
            return [{"epoch": 0, "iteration": 0, "multiplier": 1.0}]
        pieces = [(0, 1.0)] + [(e, m) for e, m in reversed(SRIP_RELEASED_SCHEDULE)]
        if schedule == "scaled":
            its = [(_first_iteration(e, iterations), m) for e, m in pieces]
            return [{"epoch": it // iterations_per_epoch, "iteration": it, "multiplier": m,
                     "recipe_epoch": e} for (it, m), (e, _) in zip(its, pieces) if it < iterations]
        return [{"epoch": e, "iteration": e * iterations_per_epoch, "multiplier": m}
                for e, m in pieces if e * iterations_per_epoch < iterations]

    def before_step(self, lr: float) -> None:
        """Fresh start vectors for this iteration (released behaviour; nothing to do with a
        persistent vector)."""
        super().before_step(lr)
        self._draw()

    def start_vectors(self) -> dict[str, Tensor]:
        """Layer name -> the start vector (m,) the next penalty uses: this step's torch.rand draw,
        or the kept unit vector of the persistent variant (views of the group buffers)."""
        self.require_attached()
        key = "v" if self.hparams["persistent_vector"] else "b"
        return {self.layers[i][0]: getattr(self, f"{key}{gi}")[pos]
                for gi, index in enumerate(self._groups) for pos, i in enumerate(index)}

    def _layer_terms(self, W, gi):
        hp = self.hparams
        A = _minus_eye(small_gram(W))
        if not hp["persistent_vector"]:
            return srip_power_term(A, getattr(self, f"b{gi}"), hp["power_iters"], hp["squared"])
        v = getattr(self, f"v{gi}")
        sigma, v_new = srip_sigma(A, v, hp["power_iters"])
        v.copy_(v_new)  # in place: v is not saved for backward by anything that needs the old one
        return sigma.square() if hp["squared"] else sigma

    def penalty(self) -> Tensor:
        return super().penalty() * self.decay
