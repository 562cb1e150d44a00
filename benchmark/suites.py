"""Suites: a protocol plus a grid of datasets x models x regularizers x seeds, as YAML.

A suite lives in ``benchmark/configs/suites/<name>.yaml`` (or any path)::

    protocol: paper_cifar             # name under configs/protocols/ or a path to a YAML file
    protocol_overrides: {iterations: 200, optimizer.lr: 0.05}     # optional, dotted keys
    datasets: [cifar10, cifar100]
    models: [cnn9, {name: cnn9, kwargs: {width: 0.5}}]
    regularizers: [weight_decay, {name: rp_comhe, hparams: {proj_dim: 40}, label: RP-CoMHE-40}]
    seeds: 5                          # 0..4, or an explicit list [0, 1, 7]
    tuning: {validation: 10000, seeds: [100, 101], grid: {...}}  # optional: benchmark.tuning

:func:`load_suite` checks everything (unknown keys, empty lists, duplicates, and every expanded
run through the engine's ``validate``) before anything runs; bad input raises a one-line
:class:`~benchmark.config.ConfigError`. :meth:`Suite.expand` gives the runs in a stable order
(dataset, model, seed, regularizer: after any prefix of seeds every regularizer has the same
seeds), and each run's id depends only on what changes its result, so the same run in two suites
is one run and one record.

A *profile* keeps a suite's grid but swaps what makes it expensive: ``profile="smoke"`` uses
the ``smoke`` protocol, two seeds and the dataset registry's offline stand-ins for datasets that
need a download (``cifar10`` -> ``synthetic:10``), so ``table2`` can be exercised end to end on a laptop or in CI.
``profile="gpu"`` is the ``fashion`` (or ``fashion_tuned``) suite at paper scale for a user with a card: the
``fashion_gpu`` protocol (batch 128, LR 0.1, 20,000 iterations, bf16 on CUDA), full-width
models (``width: 1``) and 25 seeds (the power line of the CPU pilots), meant to be trained with
``--pack-seeds``; it is
defined for those suites only (docs/leaderboard.md gives its cost). ``profile="cpu"`` is the
``modelnet40`` suite on a CPU: the ``pointnet_cpu`` protocol on ``synthetic_shapes`` (the
registry's stand-in for modelnet40), PointNet at width 0.25, two seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from benchmark.data import datasets as datasets_registry
from benchmark.config import (
    CONFIG_DIR,
    ConfigError,
    Protocol,
    RunSpec,
    load_protocol,
    load_yaml_mapping,
    named_yaml,
    split_overrides,
)
from benchmark.training import validate
from benchmark.tuning import Tuning, parse_tuning
from regularizers import hint

SUITE_DIR = CONFIG_DIR / "suites"
SUITE_KEYS = ("description", "protocol", "protocol_overrides", "datasets", "models",
              "regularizers", "seeds", "tuning")
MODEL_KEYS = ("name", "kwargs")
REGULARIZER_KEYS = ("name", "hparams", "label")

@dataclass(frozen=True)
class Profile:
    """What a profile replaces in a suite; the grid (datasets, models, regularizers) is kept."""

    protocol: str
    seeds: int
    offline: bool = True
    # Added to (and overriding) every model's kwargs, e.g. {"width": 1} for full width.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # The suites the profile is made for (their names); empty: any suite.
    suites: tuple[str, ...] = ()


PROFILES = {
    "smoke": Profile(protocol="smoke", seeds=2, offline=True),
    # The fashion suites at paper scale (full width, 20k iterations, seeds to pack on a card):
    # 25 seeds, the power line of the CPU pilots (suites/fashion.yaml); cost in
    # docs/leaderboard.md. On fashion_tuned the tuning section is kept as written (same split,
    # grids and tuning seeds), so the tuned design scales to paper width as a whole.
    "gpu": Profile(protocol="fashion_gpu", seeds=25, offline=False, model_kwargs={"width": 1},
                   suites=("fashion", "fashion_tuned")),
    # The modelnet40 suite on a CPU: synthetic_shapes (modelnet40's stand-in), PointNet at width
    # 0.25 (at 0.125 a T-Net layer has fan-in 8, which g_comhe's 8 groups of >= 2 cannot split),
    # protocols/pointnet_cpu.yaml (200 iterations, 128 points); minutes per run.
    "cpu": Profile(protocol="pointnet_cpu", seeds=2, offline=True, model_kwargs={"width": 0.25},
                   suites=("modelnet40",)),
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegularizerEntry:
    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # display name in tables; defaults to the regularizer name

    @property
    def display_label(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Suite:
    name: str
    protocol: Protocol
    datasets: tuple[str, ...]
    models: tuple[ModelEntry, ...]
    regularizers: tuple[RegularizerEntry, ...]
    seeds: tuple[int, ...]
    description: str = ""
    profile: str | None = None
    path: Path | None = None
    # A tuning stage (benchmark/tuning.py): validation split, tuning seeds, grid per method.
    tuning: Tuning | None = None

    def expand(self) -> list[RunSpec]:
        """All runs, ordered dataset > model > seed > regularizer (stable across calls)."""
        return [
            RunSpec(
                protocol=self.protocol,
                dataset=dataset,
                model=model.name,
                model_kwargs=dict(model.kwargs),
                regularizer=reg.name,
                regularizer_hparams=dict(reg.hparams),
                label=reg.display_label,
                seed=seed,
                suite=self.name,
            )
            for dataset in self.datasets
            for model in self.models
            for seed in self.seeds
            for reg in self.regularizers
        ]

    def with_regularizers(self, names: list[str], *, baseline: str | None = None) -> "Suite":
        """The suite restricted to regularizers given by name or label (in suite order).

        A name the suite lacks (a plugin's, say) is appended with default hyper-parameters; with
        ``baseline``, the suite's entries of that regularizer are kept too, so a new row is
        paired by seed with the baseline on the leaderboard.
        """
        keep = tuple(r for r in self.regularizers
                     if r.name in names or r.display_label in names or r.name == baseline)
        added = tuple(RegularizerEntry(n) for n in dict.fromkeys(names)
                      if not any(n in (r.name, r.display_label) for r in self.regularizers))
        suite = replace(self, regularizers=keep + added)
        if added:
            validate_suite(suite)  # an unknown name fails here, one line with close matches
        return suite

    def __len__(self) -> int:
        return len(self.datasets) * len(self.models) * len(self.seeds) * len(self.regularizers)


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def available_profiles() -> list[str]:
    return sorted(PROFILES)


def suite_path(name_or_path: str | Path) -> Path:
    return named_yaml(name_or_path, SUITE_DIR, "suite")


def load_suite(
    name_or_path: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    profile: str | None = None,
    validate: bool = True,
    validate_fn: Callable[[RunSpec], Any] | None = None,
) -> Suite:
    """Load, check and (by default) validate every run of a suite.

    ``overrides`` are ``--set`` style dotted keys: protocol fields (``iterations=200``) apply on
    top of the suite's ``protocol_overrides``; ``model.<kw>`` keys are added to every model's
    kwargs. ``validate_fn`` (default: ``benchmark.training.validate``) is called on every expanded
    run and must raise ConfigError for an unknown dataset, model, regularizer or hparam.
    """
    path = suite_path(name_or_path)
    name = path.stem
    raw = load_yaml_mapping(path, "suite")  # strict: empty files and duplicate keys refused
    suite = _parse(name, raw, path, overrides or {}, profile)
    if validate:
        validate_suite(suite, validate_fn)
    return suite


def validate_suite(suite: Suite, validate_fn: Callable[[RunSpec], Any] | None = None) -> None:
    """Run ``validate_fn`` on every run; the first ConfigError names the suite and the run."""
    if validate_fn is None:
        validate_fn = validate
    for spec in suite.expand():
        try:
            validate_fn(spec)
        except ConfigError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"suite '{suite.name}': {msg}") from None


# --------------------------------------------------------------------------------------------
# Parsing


def _parse(name: str, raw: Any, path: Path, overrides: dict, profile: str | None) -> Suite:
    where = f"suite '{name}'"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the file must be a mapping with keys {', '.join(SUITE_KEYS)}")
    _check_keys(raw, SUITE_KEYS, where)
    for key in ("protocol", "datasets", "models", "regularizers", "seeds"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required key '{key}'")

    proto_over, model_over, reg_over = split_overrides(dict(overrides))
    if reg_over:
        key = next(iter(reg_over))
        raise ConfigError(
            f"{where}: --set reg.{key} cannot apply to a whole suite; "
            "give hparams per regularizer in the suite file"
        )
    prof = None
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile '{profile}' (available: {', '.join(PROFILES)})")
        prof = PROFILES[profile]
        if prof.suites and name not in prof.suites:
            raise ConfigError(f"profile '{profile}' is defined for the suite(s) "
                              f"{', '.join(prof.suites)} only, not '{name}'")

    protocol_name = raw["protocol"]
    if not isinstance(protocol_name, str) or not protocol_name:
        raise ConfigError(f"{where}: 'protocol' must be a protocol name or a path to a YAML file")
    if prof is None and Path(protocol_name).suffix in (".yaml", ".yml"):
        p = Path(protocol_name)
        protocol_name = str(p if p.is_absolute() else path.parent / p)
    suite_over = raw.get("protocol_overrides") or {}
    if not isinstance(suite_over, dict):
        raise ConfigError(f"{where}: 'protocol_overrides' must be a mapping of dotted keys")
    # A profile replaces the protocol wholesale: the suite's overrides tune the replaced one.
    protocol = load_protocol(prof.protocol if prof else protocol_name,
                             {**({} if prof else suite_over), **proto_over})

    datasets = _parse_datasets(raw["datasets"], where)
    if prof is not None and prof.offline:
        datasets = tuple(dict.fromkeys(datasets_registry.offline_stand_in(d) for d in datasets))
    models = _parse_models(raw["models"], where,
                           {**(prof.model_kwargs if prof else {}), **model_over})
    regularizers = _parse_regularizers(raw["regularizers"], where)
    seeds = _parse_seeds(raw["seeds"], where)
    if prof is not None:
        seeds = tuple(range(prof.seeds))
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string")

    if profile is not None:
        name = f"{name}:{profile}"  # keeps profiled runs apart from real ones in the store
    tuning = None if raw.get("tuning") is None else parse_tuning(raw["tuning"], where, regularizers)
    suite = Suite(name=name, protocol=protocol, datasets=datasets, models=models,
                  regularizers=regularizers, seeds=seeds, description=description,
                  profile=profile, path=path, tuning=tuning)
    ids: dict[str, RunSpec] = {}
    for spec in suite.expand():
        if spec.run_id in ids:
            raise ConfigError(f"{where}: two entries give the same run ({spec.dataset}, "
                              f"{spec.model}, {spec.regularizer}, seed {spec.seed}); remove one")
        ids[spec.run_id] = spec
    return suite


def _check_keys(raw: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'{hint(key, allowed)} "
                              f"(allowed: {', '.join(allowed)})")


def _nonempty_list(value: Any, key: str, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
    if not value:
        raise ConfigError(f"{where}: '{key}' is empty (empty grid); list at least one")
    return value


def _parse_datasets(value: Any, where: str) -> tuple[str, ...]:
    items = _nonempty_list(value, "datasets", where)
    for d in items:
        if not isinstance(d, str) or not d:
            raise ConfigError(f"{where}: datasets must be names, got {d!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{where}: 'datasets' lists a dataset twice: {items}")
    return tuple(items)


def _parse_models(value: Any, where: str, extra_kwargs: dict) -> tuple[ModelEntry, ...]:
    out = []
    for i, item in enumerate(_nonempty_list(value, "models", where)):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: models[{i}] must be a name or {{name, kwargs}}")
        _check_keys(item, MODEL_KEYS, f"{where}: models[{i}]")
        name, kwargs = item.get("name"), item.get("kwargs") or {}
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: models[{i}] needs a 'name'")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}: models[{i}].kwargs must be a mapping")
        out.append(ModelEntry(name, {**kwargs, **extra_kwargs}))
    return tuple(out)


def _parse_regularizers(value: Any, where: str) -> tuple[RegularizerEntry, ...]:
    out: list[RegularizerEntry] = []
    for i, item in enumerate(_nonempty_list(value, "regularizers", where)):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: regularizers[{i}] must be a name or {{name, hparams, label}}")
        _check_keys(item, REGULARIZER_KEYS, f"{where}: regularizers[{i}]")
        name, hparams, label = item.get("name"), item.get("hparams") or {}, item.get("label") or ""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: regularizers[{i}] needs a 'name'")
        if not isinstance(hparams, dict):
            raise ConfigError(f"{where}: regularizers[{i}].hparams must be a mapping")
        if not isinstance(label, str):
            raise ConfigError(f"{where}: regularizers[{i}].label must be a string")
        out.append(RegularizerEntry(name, dict(hparams), label))
    labels = [r.display_label for r in out]
    dup = next((lab for lab in labels if labels.count(lab) > 1), None)
    if dup is not None:
        raise ConfigError(f"{where}: two regularizers share the label '{dup}'; give each a 'label'")
    return tuple(out)


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: 'seeds' must be a count or a list of integers")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: 'seeds' is {value} (empty grid); use a count >= 1 or a list")
        return tuple(range(value))
    items = _nonempty_list(value, "seeds", where)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in items):
        raise ConfigError(f"{where}: seeds must be non-negative integers, got {items}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{where}: 'seeds' lists a seed twice: {items}")
    return tuple(items)

