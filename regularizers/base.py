"""The ``Regularizer`` base class: declared hyper-parameters, attach, penalty, checkpointable state.

A regularizer is an ``nn.Module`` so that its state (learned projections, power-iteration
vectors) moves with ``.to()`` and lives in ``state_dict()``; its random generator goes in and out
of the state dict through ``get_extra_state`` / ``set_extra_state``. It holds the model's weights
by reference, never as registered parameters: the network's optimiser and weight decay must not
see the regularizer's state, and the regularizer's state dict must not duplicate the model's.

Life cycle (docs/internals.md)::

    reg = create("rp_comhe", proj_dim=40)   # hyper-parameters validated here
    reg.attach(model, roles=None, seed=0)    # attach AFTER moving the model to its device
    reg.set_epoch(epoch)                     # optional: the training epoch (SRIP's schedule)
    reg.before_step(lr)                      # every iteration, before the loss (AP/Adv inner steps)
    loss = ce + reg.penalty()                # 0-dim tensor on the weights' device
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .energy import parse_power
from .hints import hint
from .roles import neurons, resolve_roles

__all__ = ["HParam", "Kind", "Layer", "Regularizer"]


class Kind(str, Enum):
    """The type of a hyper-parameter. A plain string ("float", ...) is accepted where a Kind is."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    POWER = "power"    # one of 0, 1, 2, "a0", "a1", "a2" (recipe.md section 1)
    CHOICE = "choice"  # one of the declaration's ``choices`` (strings)


class Layer(NamedTuple):
    """One attached weight: its parameter name, the parameter, and its role."""

    name: str
    param: nn.Parameter
    role: str


@dataclass(frozen=True)
class HParam:
    """Declaration of one hyper-parameter.

    kind: a :class:`Kind` (or its string). default None means "resolved by the class" (for
    example a strength that depends on the power); minimum is inclusive. ``added``: declared
    after run ids were first recorded; a run's identity leaves it out while it holds its
    default (``benchmark.config``), so the runs made before it keep their ids.
    """

    default: Any
    kind: Kind
    minimum: float | None = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    added: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Kind(self.kind))
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in Kind)
            raise ValueError(f"HParam kind must be one of {allowed}; got {self.kind!r}") from None
        if self.kind is Kind.CHOICE and not self.choices:
            raise ValueError("HParam kind 'choice' needs choices")

    def check(self, reg: str, name: str, value: Any) -> Any:
        """The validated (canonical) value, or ValueError with one line saying what is allowed."""
        where = f"{reg}: hyper-parameter {name!r}"
        if self.kind == "power":
            try:
                return parse_power(value)
            except ValueError:
                raise ValueError(f"{where} must be one of 0, 1, 2, 'a0', 'a1', 'a2'; got {value!r}") from None
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                allowed = ", ".join(repr(c) for c in self.choices)
                raise ValueError(f"{where} must be one of {allowed}; got {value!r}"
                                 f"{hint(value, self.choices)}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be True or False; got {value!r}")
            return value
        numeric = int if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            raise ValueError(f"{where} must be {'an int' if self.kind == 'int' else 'a number'}; got {value!r}")
        if not math.isfinite(value) or (self.minimum is not None and value < self.minimum):
            low = "" if self.minimum is None else f" >= {self.minimum:g}"
            raise ValueError(f"{where} must be a finite {self.kind.value}{low}; got {value!r}")
        return value if self.kind == "int" else float(value)


class Regularizer(nn.Module):
    """Base class. Subclasses set ``name`` (by ``@register``), ``HPARAMS``, and override
    ``setup`` (build state once weights are known) and ``penalty``; AP/Adv override ``before_step``.
    """

    name: ClassVar[str] = ""
    HPARAMS: ClassVar[dict[str, HParam]] = {}
    #: True when ``before_step`` is a pure device computation of weights, buffers and lr (no
    #: random draws, no host syncs, nothing but ``self.lr`` read from Python): a whole-step CUDA
    #: graph (``runtime.compile: graph``) may then record it, with lr fixed per graph. The base
    #: hook only stores lr; RP-CoMHE draws random projections, so it says False.
    capturable_before_step: ClassVar[bool] = True

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = self.resolve_hparams(hparams)
        self.layers: list[Layer] = []  # set by attach(): the weights this regularizer acts on
        self.generator: torch.Generator | None = None
        self.seed: int | None = None
        self.lr: float = 0.0  # last learning rate given to before_step
        self.epoch: int = 0  # last training epoch given to set_epoch (0-based)
        self.iteration: int = 0  # last iteration and run length given to set_progress
        self.iterations: int | None = None
        # Tensors standing in for the attached parameters (by name) while ``penalty_for`` or
        # ``before_step_for`` runs: packed seeds keep S networks' weights stacked, and each seed's
        # regularizer reads its slice. None: the attached parameters themselves.
        self._weights: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- hyper-parameters
    @classmethod
    def resolve_hparams(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Validate names and values, fill defaults, then let the class fill dependent defaults."""
        reg = cls.name or cls.__name__
        for key in given:
            if key not in cls.HPARAMS:
                allowed = ", ".join(sorted(cls.HPARAMS)) or "none"
                raise ValueError(
                    f"{reg}: unknown hyper-parameter {key!r}{hint(key, cls.HPARAMS)}"
                    f" (allowed: {allowed})"
                )
        hp = {}
        for key, spec in cls.HPARAMS.items():
            value = given.get(key, spec.default)
            hp[key] = None if value is None and spec.default is None else spec.check(reg, key, value)
        return cls.resolve_defaults(hp)

    @classmethod
    def resolve_defaults(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Hook for defaults that depend on other hyper-parameters (None = not set by the user)."""
        return hp

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())

    # ----------------------------------------------------------------- attaching
    def attach(self, model: nn.Module, roles: dict[str, str] | None = None, seed: int = 0,
               example_input: Any = None) -> "Regularizer":
        """Select the model's weights and their roles, seed the generator, build the state.

        roles overrides ``model.weight_roles`` / the inferred roles per parameter name;
        example_input (optional) lets role inference follow the forward order. Returns self.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}")
        self.layers = self.check_model(model, roles, example_input)
        for key in list(self._buffers):  # re-attaching starts from a clean state
            del self._buffers[key]
        device = self.layers[0].param.device
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.setup(device)
        return self

    def check_model(self, model: nn.Module, roles: dict[str, str] | None = None,
                    example_input: Any = None) -> list[Layer]:
        """The layers this regularizer would act on, after :meth:`check_layers`; raises
        ValueError (one line) when it cannot act on them. Builds no state and reads only shapes,
        so a model on the meta device will do (the runner checks a run this way before it
        starts)."""
        layers = [Layer(*layer) for layer in resolve_roles(model, roles, example_input)]
        if not layers:
            raise ValueError(f"{self.name}: the model has no conv/linear weights to regularize")
        self.check_layers(layers)
        return layers

    def check_layers(self, layers: list[Layer]) -> None:
        """Override to refuse layers by their shapes and roles (ValueError, one line), e.g. a
        fan-in the hyper-parameters cannot split. Called before :meth:`setup`, and on
        meta-device models: use shapes only."""

    def setup(self, device: torch.device) -> None:
        """Build per-layer state (groups, buffers) once the weights are known."""

    @property
    def layer_names(self) -> list[str]:
        return [n for n, _, _ in self.layers]

    @property
    def layer_roles(self) -> dict[str, str]:
        return {n: r for n, _, r in self.layers}

    def require_attached(self) -> None:
        if not self.layers:
            raise RuntimeError(f"{self.name}: call attach(model) before penalty()/before_step()")

    def group_layers(self, keys: list) -> list[list[int]]:
        """Indices of self.layers grouped by key and by neuron-matrix shape, first-seen order.

        Layers of equal (N, d) are stacked and served by one kernel call in the hot path.
        """
        groups: dict[Any, list[int]] = {}
        for i, ((_, p, _), key) in enumerate(zip(self.layers, keys)):
            if key is None:
                continue
            groups.setdefault((key, p.shape[0], p[0].numel()), []).append(i)
        return list(groups.values())

    def layer_weight(self, i: int) -> Tensor:
        """The weight of layer i: the attached parameter, or its stand-in (see ``penalty_for``)."""
        name, param, _ = self.layers[i]
        return param if self._weights is None else self._weights[name]

    def stack(self, index: list[int]) -> Tensor:
        """Neuron matrices of the given layers stacked: (L, N, d); a view when L == 1."""
        if len(index) == 1:
            return neurons(self.layer_weight(index[0])).unsqueeze(0)
        return torch.stack([neurons(self.layer_weight(i)) for i in index])

    def zero(self) -> Tensor:
        p = self.layers[0][1]
        return torch.zeros((), device=p.device, dtype=p.dtype)

    # ----------------------------------------------------------------- per step
    def set_epoch(self, epoch: int) -> None:
        """Optional hook: the 0-based training epoch of the coming iteration.

        The engine calls it eagerly right before every ``before_step`` (``benchmark/training/run.py``
        ``Run.before_step``, ``benchmark/training/packed.py`` ``PackedRun.before_step``), with the epoch
        of the batch the step is about to take (its data stream's epoch: iteration //
        iterations per epoch). The base class only stores it; a regularizer whose strength
        follows an epoch schedule (``srip``) overrides it and updates a device scalar there, so
        that ``penalty()`` stays a pure function of weights and buffers. Such a regularizer must
        keep ``capturable_before_step = False``: a recorded step does not rerun Python. Callers
        that never call it leave the epoch at 0. ``before_step(lr)``'s signature is unchanged,
        so plugins that override only ``before_step`` keep working.
        """
        self.epoch = int(epoch)

    def set_progress(self, iteration: int, iterations: int) -> None:
        """Optional hook: the 0-based iteration of the coming step and the run's length.

        The engine calls it eagerly right after ``set_epoch``, before every ``before_step``
        (``benchmark/training/run.py`` ``Run.before_step``, ``benchmark/training/packed.py``
        ``PackedRun.before_step``): iteration = the batch's epoch x iterations per epoch + its
        position, iterations = the protocol's. For a schedule in fractions of the run (``srip``
        with ``schedule="scaled"``); the same rules as ``set_epoch`` apply. The base class only
        stores both; callers that never call it leave them at 0 and None.
        """
        self.iteration, self.iterations = int(iteration), int(iterations)

    def epoch_schedule(self, iterations_per_epoch: int, iterations: int) -> list[dict] | None:
        """The strength schedule in effect over a run, for the run record: a list of
        ``{"epoch", "iteration", "multiplier"}`` (from that epoch / iteration on, the strength
        is multiplied by ``multiplier``), or None for a regularizer without one (the default)."""
        return None

    def before_step(self, lr: float) -> None:
        """Called once per iteration before the loss. Stores lr; AP/Adv run inner steps here."""
        self.require_attached()
        self.lr = float(lr)

    def penalty(self) -> Tensor:
        """The scalar penalty of the current step: 0-dim tensor on the weights' device."""
        raise NotImplementedError

    def penalty_for(self, weights: dict[str, Tensor]) -> Tensor:
        """``penalty()`` of these tensors in place of the attached parameters (same names and
        shapes; gradients flow to them). Used by packed seeds, where S networks' weights live in
        stacked tensors and each seed's regularizer reads its own slice."""
        return self._with_weights(weights, self.penalty)

    def before_step_for(self, weights: dict[str, Tensor], lr: float) -> None:
        """``before_step(lr)`` reading these tensors in place of the attached parameters."""
        self._with_weights(weights, self.before_step, lr)

    def _with_weights(self, weights, fn, *args):
        missing = [n for n, _, _ in self.layers if n not in weights]
        if missing:
            raise KeyError(f"{self.name}: no stand-in for attached weight(s) {', '.join(missing)}")
        self._weights = weights
        try:
            return fn(*args)
        finally:
            self._weights = None

    # ----------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "lr": self.lr,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            if self.generator is None:
                raise RuntimeError(f"{self.name}: attach(model) before load_state_dict()")
            self.generator.set_state(state["generator"].cpu())
        self.seed = state.get("seed")
        self.lr = float(state.get("lr", 0.0))
