"""Protocols (YAML -> validated dataclasses) and run specs.

A *protocol* is everything about training that must be identical for every regularizer in a
table: optimiser, schedule, loss, data handling, evaluation. It lives in a YAML file under
``benchmark/configs/protocols/`` and every setting of recipe.md §4 is written out there.

A *run spec* is one point of a grid: protocol + dataset + model + regularizer + seed. Its
``run_id`` hashes everything that changes the result, so the same run in two suites is one run.

Bad input fails here, before anything runs, with a single-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

import regularizers
from regularizers.hints import hint as did_you_mean

CONFIG_DIR = Path(__file__).parent / "configs"
PROTOCOL_DIR = CONFIG_DIR / "protocols"


class ConfigError(ValueError):
    """A bad setting. The message is one line naming the field and what is allowed."""


# --------------------------------------------------------------------------------------------
# Run identity across versions: the rule
#
# A run's id hashes its protocol's to_dict() (with the model, dataset, regularizer and seed).
# Fields that existed when the first records were written always enter it. A field added later
# is declared with added(default): it enters a run's identity only when it differs from that
# default, so every run that does not use it keeps the id it had before the field existed.
# tests/benchmark/test_identity.py freezes the first records' field set: a new field declared
# without added() (which would change every run id) fails there. docs/internals.md, "Run ids".


def added(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A protocol field added after the first records: out of a run's identity at its default."""
    return field(default=default, default_factory=default_factory, metadata={"identity": "when-set"})


def _drop_added_defaults(obj: Any, out: dict) -> dict:
    """``out`` (the JSON form of dataclass ``obj``) without the added() fields at their default."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("identity") == "when-set":
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if value == default:
                del out[f.name]
                continue
        if dataclasses.is_dataclass(value) and isinstance(out.get(f.name), dict):
            _drop_added_defaults(value, out[f.name])
    return out


# --------------------------------------------------------------------------------------------
# Protocol dataclasses


@dataclass(frozen=True)
class Optimizer:
    # "sgd": torch.optim.SGD (lr, momentum, nesterov, weight_decay); "adam": torch.optim.Adam
    # (lr, betas, eps, weight_decay as an L2 term on the gradient; momentum and nesterov unused).
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    # Applied to ALL parameters, BN gamma/beta included (recipe.md §4).
    weight_decay: float = 5e-4
    betas: tuple[float, ...] = added((0.9, 0.999))  # Adam only
    eps: float = added(1e-8)                        # Adam only


@dataclass(frozen=True)
class Schedule:
    # "step": lr * gamma ** (milestones passed); "constant"; "exponential": TF's staircase
    # exponential_decay, lr * gamma ** (iteration // every), never below ``minimum``.
    type: Literal["step", "constant", "exponential"] = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    every: int = added(0)          # exponential only: iterations per decay
    minimum: float = added(0.0)    # exponential only: the rate is clipped from below here
    # Linear warm-up: the first W updates use lr_at(i) * (i + 1) / W (Goyal et al. 2017's gradual
    # warm-up, section 2.2). 0 = none.
    warmup_iterations: int = added(0)


@dataclass(frozen=True)
class BNMomentumSchedule:
    """BatchNorm momentum (PyTorch's: the weight of the new batch statistic, 1 - TF's decay)
    at iteration t: max(minimum, initial * gamma ** (t // every)); set before every step."""

    initial: float = 0.5
    gamma: float = 0.5
    every: int = 1
    minimum: float = 0.01


@dataclass(frozen=True)
class Augmentation:
    pad: int = 4
    pad_mode: Literal["symmetric", "reflect", "zeros"] = "symmetric"
    flip: bool = True


@dataclass(frozen=True)
class PointData:
    """Point-cloud datasets only (``benchmark.data.points``): points per shape and augmentation,
    drawn per (seed, epoch) as the image augmentation is."""

    num_points: int = 1024
    # "first": the first num_points of every shape (the PointNet code); "random": a fresh
    # random subset (and order) of each shape's points every epoch.
    sampling: Literal["first", "random"] = "first"
    rotate: bool = True          # a random rotation about the up (y) axis per shape
    jitter_sigma: float = 0.01   # Gaussian noise per coordinate, clipped at +-jitter_clip
    jitter_clip: float = 0.05
    scale_low: float = 1.0       # a random scale in [scale_low, scale_high] per shape (1, 1: off)
    scale_high: float = 1.0
    shift: float = 0.0           # a random shift in [-shift, shift] per axis per shape (0: off)


@dataclass(frozen=True)
class Data:
    # "tf": (x - 127.5) / 128 on raw 0..255 pixels, as the authors' TF code; "unit": x / 255;
    # "imagenet": (x / 255 - mean) / std with the ImageNet channel statistics (torchvision's).
    input_scaling: Literal["tf", "unit", "imagenet"] = "tf"
    image_size: int = 32
    augmentation: Augmentation = field(default_factory=Augmentation)
    # Reshuffle every epoch and drop the last partial batch (390 iterations of 128 on CIFAR).
    drop_last: bool = True
    # Cap the training set (CPU-sized protocols); 0 = all of it.
    max_train: int = 0
    # Cap the test set used by evaluation; 0 = all of it (the paper uses all 10,000).
    max_test: int = 0
    # Images held out of the training set as a validation split (0 = none): the same images
    # for every seed and method (benchmark/data/datasets/split.py). With it on, a run trains on the
    # rest and evaluates on these, never on the test set (its record says val_*, not test_*);
    # max_train caps the rest, max_test is not used.
    validation: int = added(0)
    points: PointData = added(default_factory=PointData)


@dataclass(frozen=True)
class Runtime:
    # "auto": bf16 autocast on CUDA, fp32 on CPU. "tf32": fp32 weights and activations, with TF32
    # tensor cores allowed for matmuls and convolutions on CUDA (plain fp32 on the CPU): what the
    # paper protocols use (the authors trained in fp32). "fp32": strict fp32 (TF32 off on CUDA).
    # "fp64": weights, data and loss in float64, for checking a fast path against a reference
    # (float32 noise is amplified by training). training.run.runtime_settings applies it.
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp64"] = "auto"
    # "auto": channels_last on CUDA only (it slows CNNs on the CPU).
    channels_last: Literal["auto", "on", "off"] = "auto"
    # Packages the data onto the device once and augments with tensor ops (no DataLoader).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile of forward + loss + penalty (the backward is compiled with it).
    # "auto": "reduce-overhead" on CUDA (fused kernels replayed as CUDA graphs: at batch 128
    # the GPU step is launch-bound), "off" on the CPU (compiling costs more than it saves in
    # a short CPU run). "off" is the plain eager path the fast ones are tested against.
    # "graph": the WHOLE step (batch, forward, backward, SGD) recorded as one CUDA graph per
    # learning rate (benchmark/training/capture.py); on the CPU its body runs unrecorded.
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune", "graph"] = "auto"
    # torch intra-op threads of a run (set in the runner's process and in every worker). The
    # count changes CPU results (reductions split differently), so it is fixed here, not by
    # ``--jobs``: 0 = the cores this process may use, the same under every --jobs on one machine.
    threads: int = 0
    # Under torchrun / Slurm multi-task (DDP, benchmark/training/distributed.py): BatchNorm
    # statistics over the whole global batch (SyncBatchNorm) instead of each rank's shard. One
    # process: no effect. Left out of a run's identity when false (run ids from before it stand).
    sync_bn: bool = added(False)
    # DataLoader worker processes of a file-backed dataset (imagenet), per rank; 0 = min(8, the
    # cores this process may use). Augmentation is seeded per image, so the count never changes
    # the result; left out of a run's identity at its default.
    loader_workers: int = added(0)

    def __post_init__(self) -> None:
        _require(self.threads >= 0, "runtime.threads", "must be >= 0 (0 = the cores available)")
        _require(self.loader_workers >= 0, "runtime.loader_workers",
                 "must be >= 0 (0 = min(8, the cores available))")


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    iterations: int = 1000
    batch_size: int = 128
    optimizer: Optimizer = field(default_factory=Optimizer)
    schedule: Schedule = field(default_factory=Schedule)
    label_smoothing: float = 0.01
    # The authors' TF loss is -sum(t * log(softmax(z) + softmax_eps)) with softmax_eps 1e-4.
    # It is not cosmetic: the epsilon caps each example's loss at -log(1e-4) ~ 9.2 and fades
    # the gradient of confidently wrong examples, which keeps the recipe's LR 0.1 stable; plain
    # CE (softmax_eps: 0) diverged within 20 iterations on the H100 with CNN-9 at LR 0.1.
    softmax_eps: float = 1e-4
    # Momentum of every BatchNorm's running statistics; null keeps the model's own (CNN-9:
    # 0.001, the TF EMA decay 0.999). Short CPU protocols need ~0.1: with 0.001 the running
    # statistics are still mostly their initial values after a few hundred steps, and
    # evaluation with them is meaningless.
    bn_momentum: float | None = None
    # A BN momentum that changes during training (PointNet's bn_decay schedule); null: fixed.
    bn_momentum_schedule: BNMomentumSchedule | None = added(None)
    eval_every: int = 500
    checkpoint_every: int = 5000
    data: Data = field(default_factory=Data)
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self) -> None:
        _require(self.iterations >= 1, "iterations", "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.optimizer.lr > 0, "optimizer.lr", "must be > 0")
        _require(0 <= self.optimizer.momentum < 1, "optimizer.momentum", "must be in [0, 1)")
        _require(self.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        _require(0 <= self.softmax_eps < 1, "softmax_eps", "must be in [0, 1) (0 = plain CE)")
        _require(self.eval_every >= 1, "eval_every", "must be >= 1")
        _require(self.bn_momentum is None or 0 < self.bn_momentum <= 1, "bn_momentum",
                 "must be null or in (0, 1]")
        _require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _require(0 < self.schedule.gamma <= 1, "schedule.gamma", "must be in (0, 1]")
        _require(0 <= self.schedule.warmup_iterations < self.iterations,
                 "schedule.warmup_iterations", f"must be in [0, {self.iterations}) (0 = none)")
        _require(self.schedule.warmup_iterations == 0 or self.runtime.compile != "graph",
                 "schedule.warmup_iterations", "needs runtime.compile other than 'graph' (the "
                 "whole-step graph is recorded once per learning rate)")
        ms = self.schedule.milestones
        _require(
            list(ms) == sorted(set(ms)) and all(0 < m < self.iterations for m in ms),
            "schedule.milestones",
            f"must be strictly increasing iterations inside (0, {self.iterations}), got {list(ms)}",
        )
        _require(self.data.image_size >= 8, "data.image_size", "must be >= 8")
        _require(self.data.augmentation.pad >= 0, "data.augmentation.pad", "must be >= 0")
        _require(self.data.max_train >= 0, "data.max_train", "must be >= 0 (0 = all)")
        _require(self.data.max_test >= 0, "data.max_test", "must be >= 0 (0 = all)")
        _require(self.data.validation >= 0, "data.validation",
                 "must be >= 0 (images held out of the training set; 0 = none)")
        o, sch, pts = self.optimizer, self.schedule, self.data.points
        _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas",
                 f"must be two numbers in [0, 1), got {list(o.betas)}")
        _require(o.eps > 0, "optimizer.eps", "must be > 0")
        _require(o.name == "sgd" or not o.nesterov, "optimizer.nesterov", "applies to sgd only")
        if sch.type == "exponential":
            _require(sch.every >= 1, "schedule.every", "must be >= 1 for an exponential schedule")
            _require(not sch.milestones, "schedule.milestones", "must be empty for an exponential schedule")
        _require(sch.minimum >= 0, "schedule.minimum", "must be >= 0")
        bs = self.bn_momentum_schedule
        if bs is not None:
            _require(self.bn_momentum is None, "bn_momentum_schedule",
                     "and bn_momentum exclude each other; set bn_momentum: null")
            _require(0 < bs.minimum <= bs.initial <= 1, "bn_momentum_schedule",
                     "needs 0 < minimum <= initial <= 1")
            _require(0 < bs.gamma <= 1 and bs.every >= 1, "bn_momentum_schedule",
                     "needs gamma in (0, 1] and every >= 1")
        _require(pts.num_points >= 1, "data.points.num_points", "must be >= 1")
        _require(pts.jitter_sigma >= 0 and pts.jitter_clip >= 0, "data.points.jitter_sigma",
                 "and jitter_clip must be >= 0")
        _require(0 < pts.scale_low <= pts.scale_high, "data.points.scale_low",
                 "must be > 0 and <= scale_high")
        _require(pts.shift >= 0, "data.points.shift", "must be >= 0")

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for the update at 0-based ``iteration``."""
        warm = self.schedule.warmup_iterations
        ramp = (iteration + 1) / warm if iteration < warm else 1.0
        if self.schedule.type == "constant":
            return self.optimizer.lr * ramp if warm else self.optimizer.lr
        if self.schedule.type == "exponential":
            s = self.schedule
            lr = max(self.optimizer.lr * s.gamma ** (iteration // s.every), s.minimum)
            return lr * ramp if warm else lr
        drops = sum(iteration >= m for m in self.schedule.milestones)
        lr = self.optimizer.lr * self.schedule.gamma**drops
        return lr * ramp if warm else lr

    def bn_momentum_at(self, iteration: int) -> float | None:
        """BatchNorm momentum for the update at 0-based ``iteration``; None without a schedule."""
        s = self.bn_momentum_schedule
        if s is None:
            return None
        return max(s.minimum, s.initial * s.gamma ** (iteration // s.every))

    def to_dict(self) -> dict[str, Any]:
        """Every field, except fields declared with :func:`added` while they hold their default:
        a protocol that does not use them keeps its run ids (the rule above)."""
        return _drop_added_defaults(self, _jsonable(dataclasses.asdict(self)))


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"protocol field '{name}' {what}")


# --------------------------------------------------------------------------------------------
# Generic, strict dict -> dataclass conversion (unknown keys and wrong types fail by name)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or cls.__name__}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown field '{path}'{did_you_mean(key, names)} "
                              f"(allowed: {', '.join(names)})")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"'{where or cls.__name__}': {exc}") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"field '{path}' is {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"field '{path}' must be a list, got {value!r}")
        return tuple(_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [t for t in typing.get_args(tp) if t is not type(None)]
        return _coerce(inner[0], value, path) if len(inner) == 1 else value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"field '{path}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"field '{path}' must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"field '{path}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"field '{path}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"field '{path}' must be a string, got {value!r}")
        return value
    return value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Loading protocols, applying --set overrides


def available_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def named_yaml(name_or_path: str | Path, directory: Path, kind: str) -> Path:
    """A YAML file given by path, or by name in ``directory``; one-line error with close matches."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{kind} file '{p}' does not exist")
        return p
    path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(q.stem for q in directory.glob("*.yaml"))
        raise ConfigError(f"unknown {kind} '{name_or_path}'{did_you_mean(name_or_path, names)} "
                          f"(available: {', '.join(names)})")
    return path


def protocol_path(name_or_path: str | Path) -> Path:
    return named_yaml(name_or_path, PROTOCOL_DIR, "protocol")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(f"duplicate key '{key}' (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_mapping(path: Path, kind: str) -> dict[str, Any]:
    """A YAML file that must hold a non-empty mapping: safe loader, no duplicate keys; one-line
    ConfigError naming the file otherwise (an empty file must not silently mean "defaults")."""
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise ConfigError(f"{kind} file '{path}' cannot be read: {exc.strerror}") from None
    except ConfigError as exc:
        raise ConfigError(f"{kind} file '{path}': {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        raise ConfigError(f"{kind} file '{path}' is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{kind} file '{path}' must be a mapping of fields, got {type(raw).__name__}")
    return raw


def load_protocol(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Protocol:
    path = protocol_path(name_or_path)
    raw = load_yaml_mapping(path, "protocol")
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return from_dict(Protocol, raw)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set key=value`` items; values are YAML scalars (``1e-3``, ``true``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}'")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse value '{value}'") from None
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-2" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ConfigError(f"--set {key.strip()}: must be a finite number, got '{value}'")
        out[key.strip()] = parsed
    return out


def split_overrides(sets: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Split ``--set`` keys into (protocol, model kwargs, regularizer hparams).

    ``model.width=0.25`` goes to the model, ``reg.proj_dim=30`` to the regularizer, anything else
    (``iterations=200``, ``optimizer.lr=0.05``) to the protocol.
    """
    proto, model_kw, reg_kw = {}, {}, {}
    for key, value in sets.items():
        if key.startswith("model."):
            model_kw[key[len("model."):]] = value
        elif key.startswith("reg."):
            reg_kw[key[len("reg."):]] = value
        else:
            proto[key] = value
    return proto, model_kw, reg_kw


# --------------------------------------------------------------------------------------------
# Run spec


@dataclass(frozen=True)
class RunSpec:
    protocol: Protocol
    dataset: str
    model: str
    regularizer: str
    seed: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    regularizer_hparams: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # display name in tables; defaults to the regularizer name
    suite: str | None = None

    @property
    def display_label(self) -> str:
        return self.label or self.regularizer

    def identity(self) -> dict[str, Any]:
        """Everything that changes the result (not label or suite).

        Hyper-parameters are the resolved ones (defaults filled by the regularizer's class,
        numbers in canonical form), so ``{}`` and the defaults written out, or ``strength: 1``
        and ``1.0``, are one run. A plugin regularizer (one defined outside the ``regularizers``
        package) adds ``regularizer_source``, a hash of its source file: an edited plugin is a
        new run. Built-ins are versioned by the git commit recorded with every run instead, so
        a sweep resumed after a commit goes on (reports keep commits apart, docs/statistics.md).
        """
        ident = {
            "protocol": self.protocol.to_dict(),
            "dataset": self.dataset,
            "model": self.model,
            "model_kwargs": _jsonable(dict(sorted(self.model_kwargs.items()))),
            "regularizer": self.regularizer,
            "regularizer_hparams": _jsonable(dict(sorted(self.regularizer_hparams.items()))),
            "seed": self.seed,
        }
        resolved, source = _resolved_regularizer(self.regularizer, self.regularizer_hparams)
        if resolved is not None:
            ident["regularizer_hparams"] = resolved
        if source is not None:
            ident["regularizer_source"] = source
        return ident

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """Integral floats as ints (``1.0`` -> ``1``): equal numbers hash equally."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _resolved_regularizer(name: str, hparams: dict[str, Any]) -> tuple[dict | None, str | None]:
    """(resolved hyper-parameters in canonical form, source hash of a plugin or None).

    (None, None) when the name is not registered or the values are invalid: validation reports
    that with its own one-line error, and the id then falls back to the values as typed.
    """
    try:
        cls = regularizers.registry.get(name)
        resolved = cls.resolve_hparams(dict(hparams))
    except (ImportError, ValueError, TypeError):
        return None, None
    # hyper-parameters declared after the first records (HParam.added) stay out at their default
    resolved = {k: v for k, v in resolved.items()
                if not (getattr(cls.HPARAMS.get(k), "added", False) and v == cls.HPARAMS[k].default)}
    return _canonical(_jsonable(resolved)), _plugin_source_hash(cls)


def _plugin_source_hash(cls: type) -> str | None:
    """sha256 (16 hex) of the file defining a plugin regularizer; None for a built-in."""
    if cls.__module__ == "regularizers" or cls.__module__.startswith("regularizers."):
        return None
    try:
        path = Path(inspect.getsourcefile(cls) or "")
        stat = path.stat()
    except (TypeError, OSError):
        return "unknown"
    return _file_hash(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, mtime_ns: int, size: int) -> str:  # mtime/size: re-hash after an edit
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
