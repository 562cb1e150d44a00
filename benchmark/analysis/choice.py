"""The tuning stage's choice: each method's grid value from its tuning records (never a test
metric), written with every grid point's result to ``<results>/tuning/choice.yaml``. The grid,
the specs and the stale-file rule are in :mod:`benchmark.tuning`; the rule itself is there too.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from benchmark import records
from benchmark.analysis.power import pooled_sd, seed_estimate
from benchmark.analysis.store import classify_outcome
from benchmark.config import ConfigError, Protocol
from benchmark.tuning import cell_key, choice_path, grid_hash, tune_specs, TUNING_DIR


def choose(suite, results: Path) -> dict:
    """Pick each method's value from the tuning records under ``<results>/tuning/`` and write
    the choice file there (atomically); returns its content. One-line ConfigError naming the
    count when a tuning run has no record yet (the stage is not finished)."""
    specs = tune_specs(suite)
    tdir = Path(results) / TUNING_DIR
    found = {spec.run_id: records.load_record(records.record_path(tdir, spec.run_id))
             for spec in specs}
    absent = [rid for rid, rec in found.items() if rec is None]
    if absent:
        raise ConfigError(f"{len(absent)} of {len(specs)} tuning runs of '{suite.name}' have no "
                          f"record under {tdir} (first {absent[0]}); finish `run --stage tune`")
    points: dict[tuple, dict[float, list]] = {}
    for spec in specs:
        rec = found[spec.run_id]
        axis = suite.tuning.grid[spec.display_label]
        value = (_protocol_value(spec.protocol, axis.param) if axis.on_protocol
                 else float(spec.regularizer_hparams[axis.param]))
        outcome, _ = classify_outcome(rec["status"], _as_test_names(rec.get("final") or {}),
                                      spec.protocol.softmax_eps, spec.dataset)
        err = (rec.get("final") or {}).get("val_error")
        points.setdefault(cell_key(spec), {}).setdefault(value, []).append((spec.seed, outcome, err))
    choices = []
    for spec in [s for s in specs if s.seed == suite.tuning.seeds[0]]:
        cell = cell_key(spec)
        if any(c["_cell"] == cell for c in choices):
            continue
        axis = suite.tuning.grid[spec.display_label]
        grid = [grid_point(v, runs) for v, runs in points[cell].items()]
        ok = [g for g in grid if g["broken"] == 0]
        best = min(ok, key=lambda g: (g["mean"], g["value"])) if ok else None
        choices.append({"_cell": cell, "dataset": spec.dataset, "model": spec.model,
                        "model_kwargs": dict(spec.model_kwargs), "label": spec.display_label,
                        "regularizer": spec.regularizer, "param": axis.param,
                        "chosen": None if best is None else best["value"], "grid": grid})
    for c in choices:
        del c["_cell"]
    out = {"suite": suite.name, "grid_hash": grid_hash(suite), "metric": "val_error",
           "validation_images": suite.tuning.validation, "seeds": list(suite.tuning.seeds),
           "rule": "lowest mean validation error over the tuning seeds; values with a "
                   "diverged or failed run are not chosen (stuck runs count with their error)",
           "choices": choices, "spread": tuning_spread(choices)}
    records.atomic_write(choice_path(results), "# written by `python -m benchmark run --stage "
                         "tune` (benchmark/analysis/choice.py); do not edit\n"
                         + yaml.safe_dump(out, sort_keys=False))
    return out


def _as_test_names(final: dict) -> dict:
    """The stuck rule reads test_acc/n_test: give it the validation ones (same meaning here)."""
    return {**final, "test_acc": final.get("val_acc"), "n_test": final.get("n_val")}


def _protocol_value(protocol: Protocol, dotted: str) -> float:
    node: Any = protocol
    for part in dotted.split("."):
        node = getattr(node, part)
    return float(node)


def grid_point(value: float, runs: list) -> dict:
    """One grid point over its tuning seeds. A stuck run's error is a real (high) error and
    counts; a diverged or failed run has none, and makes the point ``broken``."""
    errors = [e for _, outcome, e in runs if outcome in ("complete", "stuck")
              and e is not None and math.isfinite(e)]
    return {"value": value, "n": len(errors),
            "mean": statistics.fmean(errors) if errors else None,
            "sd": statistics.stdev(errors) if len(errors) > 1 else None,
            "stuck": sum(outcome == "stuck" for _, outcome, _ in runs),
            "broken": len(runs) - len(errors),
            "val_error_by_seed": {int(s): e for s, _, e in sorted(runs)}}


def _chosen_errors(choice: dict) -> dict[int, float]:
    """{tuning seed: validation error} of a method's chosen grid point (finite ones only)."""
    point = next((g for g in choice["grid"] if g["value"] == choice.get("chosen")), None)
    return {int(s): e for s, e in ((point or {}).get("val_error_by_seed") or {}).items()
            if e is not None and math.isfinite(e)}


def tuning_spread(choices: list[dict], baseline: str = "weight_decay", alpha: float = 0.05
                  ) -> list[dict]:
    """What the final stage needs to size its seeds, per (dataset, model): the SD of the paired
    validation differences (method - baseline, both at their chosen values, seed by seed: the
    tuning seeds are shared, so runs pair as the final table's do), pooled over the methods
    (:func:`~benchmark.analysis.power.pooled_sd`), and the seeds that SD asks for to detect
    0.3 points at Holm's first threshold, alpha / methods, with the interval the SD's own
    uncertainty gives (:func:`~benchmark.analysis.power.seed_estimate`). Few tuning seeds give
    few degrees of freedom: the interval says how little the point estimate is worth."""
    cells: dict[tuple, list[dict]] = {}
    for c in choices:
        key = (c["dataset"], c["model"], repr(sorted((c.get("model_kwargs") or {}).items())))
        cells.setdefault(key, []).append(c)
    out = []
    for group in cells.values():
        base = next((c for c in group if c["regularizer"] == baseline), None)
        methods = [c for c in group if c is not base]
        if base is None or not methods:
            continue
        base_err = _chosen_errors(base)
        sds, ns, by_method = [], [], {}
        for c in methods:
            err = _chosen_errors(c)
            diffs = [err[s] - base_err[s] for s in sorted(err.keys() & base_err.keys())]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            by_method[c["label"]] = {"n": len(diffs), "mean_diff": statistics.fmean(diffs)
                                     if diffs else None, "sd_diff": sd if len(diffs) > 1 else None}
            sds.append(sd)
            ns.append(len(diffs))
        sd, df = pooled_sd(sds, ns)
        level = alpha / len(methods)
        est = seed_estimate(sd, df, alpha=level)
        finite = lambda x: float(x) if x is not None and math.isfinite(x) else None  # noqa: E731
        out.append({"dataset": base["dataset"], "model": base["model"],
                    "model_kwargs": dict(base.get("model_kwargs") or {}), "baseline": base["label"],
                    "sd_diff": finite(sd), "df": int(df), "level": level,
                    "seeds": finite(est["seeds"]), "seeds_low": finite(est["seeds_low"]),
                    "seeds_high": finite(est["seeds_high"]), "by_method": by_method})
    return out
