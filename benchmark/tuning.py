"""Tuning stages of a suite: every method tuned on a validation split, the test set touched once.

A suite may declare (issue 24; DeepOBS and AlgoPerf give every method the same budget)::

    tuning:
      validation: 10000        # images held out of the training set (data.validation)
      seeds: [100, 101, 102]   # the tuning seeds, the same for every grid point
      grid:                    # one axis per regularizer (its name or label), equal lengths
        weight_decay: {param: optimizer.weight_decay, values: [1.0e-4, 5.0e-4, 2.5e-3]}
        hs_mhe: {param: strength, values: [0.1, 1, 10]}

A ``param`` with a dot is a protocol field (the baseline's weight decay is the optimizer's,
``optimizer.weight_decay``: the ``weight_decay`` regularizer adds no term); without a dot it is
one of the regularizer's hyper-parameters (``python -m benchmark list regularizers -v``).

Stages (``run --suite X --stage ...``):

- ``tune``: every (dataset, model, regularizer, grid value, tuning seed) on the train/validation
  split, records under ``<results>/tuning/``; when all have a record,
  :func:`benchmark.analysis.choice.choose` writes
  ``<results>/tuning/choice.yaml``.
- ``final``: the suite's own seeds, each method at its chosen value, on the full training set
  with the test evaluation, records under ``<results>/``. It refuses, in one line, a missing
  choice file or a stale one (its ``grid_hash`` is not that of the tuning runs the suite
  defines now: the grid, seeds, split, protocol or models changed).

The choice: per (dataset, model, method) the grid value with the lowest mean validation error
over the tuning seeds (ties: the smaller value), among values none of whose runs diverged or
failed (a setting that breaks training on a tuning seed is not chosen; a stuck run's high error
counts in its mean, as every run counts, docs/statistics.md). Nothing reads a test metric.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmark.config import ConfigError, Protocol, RunSpec, from_dict
from benchmark.training import validate

TUNING_KEYS = ("validation", "seeds", "grid")
AXIS_KEYS = ("param", "values")
TUNING_DIR = "tuning"
CHOICE_FILE = "choice.yaml"


@dataclass(frozen=True)
class Axis:
    """The grid of one regularizer: ``param`` (a dotted protocol field, or a hyper-parameter
    name) takes each of ``values``."""

    param: str
    values: tuple[float, ...]

    @property
    def on_protocol(self) -> bool:
        return "." in self.param


@dataclass(frozen=True)
class Tuning:
    validation: int
    seeds: tuple[int, ...]
    grid: dict[str, Axis]  # keyed by the suite regularizer's display label


def parse_tuning(raw: Any, where: str, regularizers: tuple) -> Tuning:
    """The suite's ``tuning`` mapping; one-line ConfigError for anything wrong. ``regularizers``:
    the suite's RegularizerEntry tuple; every one needs exactly one axis, keyed by name or label."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'tuning' must be a mapping with keys {', '.join(TUNING_KEYS)}")
    unknown = [k for k in raw if k not in TUNING_KEYS]
    missing = [k for k in TUNING_KEYS if k not in raw]
    if unknown or missing:
        raise ConfigError(f"{where}: tuning needs exactly the keys {', '.join(TUNING_KEYS)} "
                          f"({'unknown ' + unknown[0] if unknown else 'missing ' + missing[0]})")
    val, seeds, grid = raw["validation"], raw["seeds"], raw["grid"]
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ConfigError(f"{where}: tuning.validation must be a number of images >= 1, got {val!r}")
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{where}: tuning.seeds must be a list of distinct seeds >= 0, got {seeds!r}")
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: tuning.grid must map each regularizer to {{param, values}}")
    axes: dict[str, Axis] = {}
    used: set[str] = set()
    for reg in regularizers:
        keys = [k for k in dict.fromkeys((reg.display_label, reg.name)) if k in grid]
        if len(keys) != 1:
            raise ConfigError(f"{where}: tuning.grid needs one entry for regularizer "
                              f"'{reg.display_label}' (by its name or label), found {len(keys)}")
        used.add(keys[0])
        axes[reg.display_label] = _parse_axis(grid[keys[0]], f"{where}: tuning.grid.{keys[0]}")
    extra = [k for k in grid if k not in used]
    if extra:
        raise ConfigError(f"{where}: tuning.grid.{extra[0]} names no regularizer of the suite")
    sizes = {len(a.values) for a in axes.values()}
    if len(sizes) != 1:  # the same tuning budget for every method
        raise ConfigError(f"{where}: every tuning.grid axis needs the same number of values "
                          f"(found {sorted(sizes)})")
    return Tuning(val, tuple(seeds), axes)


def _parse_axis(raw: Any, where: str) -> Axis:
    if not isinstance(raw, dict) or sorted(raw) != sorted(AXIS_KEYS):
        raise ConfigError(f"{where} must be {{param: NAME, values: [...]}}")
    param, values = raw["param"], raw["values"]
    if isinstance(values, list):  # YAML 1.1 reads 5e-4 (no dot) as a string
        values = [_number(v) for v in values]
    if not isinstance(param, str) or not param:
        raise ConfigError(f"{where}.param must be a hyper-parameter name or a dotted protocol field")
    if (not isinstance(values, list) or len(values) < 2 or len(set(values)) != len(values)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in values)):
        raise ConfigError(f"{where}.values must list at least two distinct numbers, got {values!r}")
    return Axis(param, tuple(float(v) for v in values))


def _number(v: Any) -> Any:
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return v


def with_fields(protocol: Protocol, fields: dict[str, Any]) -> Protocol:
    """``protocol`` with dotted fields replaced, validated as a protocol file would be."""
    raw = dataclasses.asdict(protocol)
    for dotted, value in fields.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"tuning param '{dotted}': '{part}' is not a protocol section")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"tuning param '{dotted}' is not a protocol field")
        node[leaf] = value
    return from_dict(Protocol, raw)


def _point(suite, base: RunSpec, value: float, *, validation: int, seed: int,
           suite_name: str) -> RunSpec:
    """``base`` (a run of the suite) with its method's grid parameter at ``value``."""
    axis = suite.tuning.grid.get(base.display_label)
    if axis is None:
        raise ConfigError(f"suite '{suite.name}': '{base.display_label}' has no tuning.grid entry")
    proto_fields = {"data.validation": validation} if validation else {}
    hparams = dict(base.regularizer_hparams)
    if axis.on_protocol:
        proto_fields[axis.param] = value
    else:
        hparams[axis.param] = value
    return dataclasses.replace(base, protocol=with_fields(base.protocol, proto_fields),
                               regularizer_hparams=hparams, seed=seed,
                               suite=suite_name)


def stage_specs(suite, stage: str | None, results: Path) -> tuple[list[RunSpec], Path]:
    """(runs, results directory) of ``run --suite X [--stage tune|final] --results DIR``. A suite
    with a tuning section needs a stage (its plain runs would be an untuned table); the tune
    stage writes to DIR/tuning/. Every run is validated (grid values included) before any runs."""
    if stage is None:
        if suite.tuning is not None:
            raise ConfigError(f"suite '{suite.name}' has a tuning section: give --stage tune "
                              "(grid on the validation split), then --stage final")
        return suite.expand(), results
    if stage == "tune":
        specs, results = tune_specs(suite), Path(results) / TUNING_DIR
    elif stage == "final":
        specs = final_specs(suite, results)
    else:
        raise ConfigError(f"unknown stage '{stage}' (allowed: tune, final)")
    for spec in specs:
        validate(spec)
    return specs, results


def tune_specs(suite) -> list[RunSpec]:
    """Every run of the tuning stage, ordered seed > value > the suite's order (so a stopped
    stage has whole grids for its first seeds)."""
    _require_tuning(suite)
    if suite.protocol.data.validation:
        raise ConfigError(f"suite '{suite.name}': its protocol sets data.validation; the tuning "
                          "section holds the split (tuning.validation), the protocol keeps 0")
    bases = [s for s in suite.expand() if s.seed == suite.seeds[0]]
    t = suite.tuning
    n = len(next(iter(t.grid.values())).values)
    return [_point(suite, b, t.grid[b.display_label].values[i], validation=t.validation,
                   seed=seed, suite_name=f"{suite.name}:tune")
            for seed in t.seeds for i in range(n) for b in bases]


def grid_hash(suite) -> str:
    """What a choice was made from: the ids of every tuning run (protocol, split, grid, seeds,
    datasets, models, hyper-parameters all enter them)."""
    ids = sorted(s.run_id for s in tune_specs(suite))
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]


def _require_tuning(suite) -> None:
    if suite.tuning is None:
        raise ConfigError(f"suite '{suite.name}' has no tuning section; run it without --stage")


def choice_path(results: Path) -> Path:
    return Path(results) / TUNING_DIR / CHOICE_FILE


def cell_key(spec: RunSpec) -> tuple:
    """What one choice is made for: (dataset, model, model kwargs, method label)."""
    return (spec.dataset, spec.model, repr(sorted(spec.model_kwargs.items())), spec.display_label)


def final_specs(suite, results: Path) -> list[RunSpec]:
    """The final stage: the suite's runs, each method at its chosen value (full training set,
    test evaluation). One-line ConfigError for a missing, stale or unusable choice file."""
    _require_tuning(suite)
    path = choice_path(results)
    if not path.is_file():
        raise ConfigError(f"no choice file {path}; run `--stage tune` on '{suite.name}' first")
    choice = yaml.safe_load(path.read_text()) or {}
    if choice.get("grid_hash") != grid_hash(suite):
        raise ConfigError(f"choice file {path} is stale (made from another tuning grid, split, "
                          f"protocol or seeds than '{suite.name}' defines now); run `--stage tune` again")
    chosen = {(c["dataset"], c["model"], repr(sorted((c.get("model_kwargs") or {}).items())),
               c["label"]): c.get("chosen") for c in choice.get("choices") or []}
    out = []
    for spec in suite.expand():
        value = chosen.get(cell_key(spec))
        if value is None:
            raise ConfigError(f"choice file {path} chose no value for '{spec.display_label}' on "
                              f"{spec.dataset} (every grid value broke a tuning run); widen the grid")
        out.append(_point(suite, spec, value, validation=0, seed=spec.seed,
                          suite_name=suite.name))
    return out
