"""The results store: every valid record of a results directory as two pandas tables.

``runs``: one row per record; ``curves``: one row per (run, evaluation). Columns and their
meaning are in docs/internals.md; the tables are derived data, rebuilt from the records (``DIR/<run_id>.json``) at
any time. :func:`save_store` writes them to ``<results>/store/`` as Parquet (pyarrow) and CSV,
each file atomically. Records of several suites and code versions coexist; select with
:func:`filter_runs` (suite, git commit prefix, status, ...) and :func:`curves_for`.

Each row also carries the run's set-up (``protocol_hash``, ``model_kwargs``, ``code``,
``packed_seeds``, ``dtype``, ``threads``, ``world_size``, ``device_type``: what a cell must
not mix, docs/statistics.md) and its ``outcome``: the recorded status, with a complete run
that sat at the loss ceiling or at chance accuracy reclassified as ``stuck`` by
:func:`classify_outcome`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from benchmark.config import ConfigError
from benchmark.tuning import choice_path
from benchmark.records import (FIELDS_SINCE_2, REQUIRED_FIELDS, STATUSES, atomic_write, read_version,
                               record_files)

STORE_DIR = "store"
RUNS_SCHEMA: dict[str, str] = {
    "schema_version": "Int64", "run_id": "string", "suite": "string", "label": "string",
    "dataset": "string", "model": "string", "regularizer": "string", "hparams": "string",
    "protocol": "string", "iterations": "Int64", "seed": "Int64", "status": "string",
    "reason": "string", "test_acc": "float64", "test_error": "float64", "train_loss": "float64",
    "penalty": "float64", "n_test": "Int64", "wall_time_s": "float64",
    "median_step_ms": "float64", "git_commit": "string", "git_dirty": "boolean",
    "device": "string", "torch_version": "string", "synthetic": "boolean", "record_path": "string",
    "model_kwargs": "string", "protocol_hash": "string", "regularizer_source": "string",
    "code": "string", "packed_seeds": "Int64", "dtype": "string", "threads": "Int64",
    "world_size": "string",
    "softmax_eps": "float64", "final_iteration": "Int64", "outcome": "string",
    "outcome_reason": "string", "correct": "string",
    # point-cloud runs (PointNet's "avg class acc"); NaN for records written before it existed
    "test_mean_class_acc": "float64",
    # a tuned suite's protocol fields chosen by its tuning stage, {field: value} as JSON
    "tuned": "string",
    # the processor that trained the run (the card's name on CUDA, else the CPU model); None for
    # records before the "machine" block. Seeds of one table may come from several machines.
    "machine": "string",
    # "cpu" or "cuda": which kernels trained the run (a cell never pools the two); None for a
    # record that names no device (a runner-written failure)
    "device_type": "string",
}
OUTCOMES = ("complete", "diverged", "stuck", "failed")
# Stuck rule (docs/statistics.md): final train CE at >= this fraction of the softmax-epsilon
# ceiling -ln(eps) (5.5 at eps 1e-4; a model predicting uniformly over 100 classes has 4.6), or
# final test accuracy within STUCK_CHANCE_SE binomial standard errors of chance (100 / classes).
STUCK_LOSS_FRACTION = 0.6
STUCK_CHANCE_SE = 3.0
_CLASSES = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "digits": 10, "modelnet40": 40,
            "synthetic_shapes": 10}
CURVES_SCHEMA: dict[str, str] = {
    "run_id": "string", "label": "string", "dataset": "string", "model": "string",
    "seed": "Int64", "iteration": "Int64", "test_acc": "float64", "test_error": "float64",
    "train_loss": "float64", "penalty": "float64", "energy_total": "float64",
}
CURVE_METRICS = ("test_acc", "test_error", "train_loss", "penalty", "energy_total")


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _typed(rows: list[dict], schema: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(schema))
    return df.astype(schema) if len(df) else pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in schema.items()})


def _num_classes(dataset: Any) -> int | None:
    base, _, arg = str(dataset).partition(":")
    if base in ("synthetic", "synthetic_shapes") and arg.isdigit():
        return int(arg)
    if base == "synthetic":
        return None
    return _CLASSES.get(base)


def classify_outcome(status: str, final: dict, softmax_eps: float, dataset: Any
                     ) -> tuple[str, str | None]:
    """(outcome, reason): ``status`` unless a complete run is stuck or has no final metric.

    Stuck: final train loss >= STUCK_LOSS_FRACTION * -ln(softmax_eps) (only with a ceiling,
    softmax_eps > 0), or final test accuracy <= chance + STUCK_CHANCE_SE binomial SEs at chance.
    """
    if status != "complete":
        return status, None
    acc, loss, n_test = _num(final.get("test_acc")), _num(final.get("train_loss")), \
        _num(final.get("n_test"))
    if not math.isfinite(acc):
        return "diverged", "no finite final test accuracy"
    if softmax_eps and softmax_eps > 0 and math.isfinite(loss):
        ceiling = -math.log(softmax_eps)
        if loss >= STUCK_LOSS_FRACTION * ceiling:
            return "stuck", (f"final train loss {loss:.2f} >= {STUCK_LOSS_FRACTION} x the "
                             f"softmax-epsilon ceiling {ceiling:.2f}")
    classes = _num_classes(dataset)
    if classes and math.isfinite(n_test) and n_test > 0:
        chance = 100.0 / classes
        se = 100.0 * math.sqrt(chance / 100 * (1 - chance / 100) / n_test)
        if acc <= chance + STUCK_CHANCE_SE * se:
            return "stuck", (f"final test accuracy {acc:.2f}% is within {STUCK_CHANCE_SE:g} "
                             f"binomial SEs of chance ({chance:.1f}%)")
    return "complete", None


def _world_size(record: dict) -> str | None:
    """Processes the run trained on: "1", "2", ... or "1+2" for a run resumed at another world
    size (each segment's, distinct, in order). Records from before distributed runs existed
    trained in one process: "1"; a failed record written by the runner (no runtime): None."""
    dist = record["distributed"]
    if isinstance(dist, dict):
        sizes = [int(w) for w in dist.get("world_sizes") or [dist.get("world_size") or 1]]
        return "+".join(str(w) for w in dict.fromkeys(sizes))
    return "1" if record["runtime"] else None


def _threads(runtime: dict) -> Any:
    value = runtime.get("threads")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def tuned_protocol_fields(results_dir: str | Path) -> tuple[str, ...]:
    """The protocol fields that a tuned suite's tuning stage chose for some method (e.g. the
    baseline's ``optimizer.weight_decay``), from ``tuning/choice.yaml`` beside the records of
    ``results_dir``; () otherwise. Such a field differs between the methods of a tuned table
    by design: the store keeps it out of ``protocol_hash`` and in the ``tuned`` column, which
    must then be one value per method (:func:`benchmark.analysis.cells.check_setup`)."""
    path = choice_path(results_dir)
    if not path.is_file():
        return ()
    try:
        choice = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable choice file ({type(exc).__name__})") from None
    params = (str(c.get("param", "")) for c in choice.get("choices") or [])
    return tuple(sorted({p for p in params if "." in p}))  # dotted: a protocol field


def _split_tuned(protocol: dict, tuned: tuple[str, ...]) -> tuple[dict, str | None]:
    """(the protocol with each tuned field set to "tuned", {field: value} as JSON or None)."""
    if not tuned:
        return protocol, None
    protocol, values = json.loads(json.dumps(protocol)), {}  # a deep copy
    for dotted in tuned:
        *path, leaf = dotted.split(".")
        node = protocol
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            values[dotted], node[leaf] = node[leaf], "tuned"
    return protocol, json.dumps(values, sort_keys=True)


def _run_row(record: dict, rel_path: str, tuned: tuple[str, ...] = ()) -> dict[str, Any]:
    config, final = record.get("config") or {}, record.get("final") or {}
    protocol = config.get("protocol") or {}
    git, versions = record.get("git") or {}, record.get("versions") or {}
    runtime = record["runtime"] or {}
    for name, value in (("config", config), ("final", final), ("protocol", protocol),
                        ("git", git), ("runtime", runtime)):
        if not isinstance(value, dict):
            raise TypeError(f"'{name}' is a {type(value).__name__}, not a mapping")
    shared, tuned_values = _split_tuned(protocol, tuned)
    eps = _num(protocol.get("softmax_eps"))
    outcome, why = classify_outcome(record["status"], final, eps, config.get("dataset"))
    commit = git.get("commit")
    code = (str(commit)[:12] if commit else "unknown") + ("+dirty" if git.get("dirty") else "")
    correct = record.get("final_correct")
    return {
        "schema_version": record["schema_version"], "run_id": record["run_id"],
        "suite": record.get("suite"), "label": record.get("label") or config.get("regularizer"),
        "dataset": config.get("dataset"), "model": config.get("model"),
        "regularizer": config.get("regularizer"),
        "hparams": json.dumps(config.get("regularizer_hparams") or {}, sort_keys=True),
        "protocol": protocol.get("name"), "iterations": protocol.get("iterations"),
        "seed": record["seed"], "status": record["status"], "reason": record.get("reason"),
        **{k: _num(final.get(k)) for k in ("test_acc", "test_error", "train_loss", "penalty",
                                           "test_mean_class_acc")},
        "n_test": final.get("n_test"), "wall_time_s": _num(record.get("wall_time_s")),
        "median_step_ms": _num(record.get("median_step_ms")), "git_commit": commit,
        "git_dirty": git.get("dirty"), "device": record.get("device"),
        "torch_version": versions.get("torch"), "synthetic": bool(record.get("synthetic")),
        "record_path": rel_path,
        "model_kwargs": json.dumps(config.get("model_kwargs") or {}, sort_keys=True),
        "protocol_hash": hashlib.sha256(json.dumps(shared, sort_keys=True).encode())
        .hexdigest()[:12] if protocol else None, "tuned": tuned_values,
        "regularizer_source": config.get("regularizer_source"), "code": code,
        "packed_seeds": runtime.get("packed_seeds", 1), "dtype": runtime.get("dtype"),
        "threads": _threads(runtime), "world_size": _world_size(record), "softmax_eps": eps,
        "final_iteration": final.get("iteration"), "outcome": outcome,
        "outcome_reason": why or record.get("reason"),
        "correct": json.dumps(correct, sort_keys=True) if isinstance(correct, dict) else None,
        "machine": _machine(record), "device_type": _device_type(record),
    }


def _machine(record: dict) -> str | None:
    """The card's name for a CUDA run, else the CPU model (benchmark.machine.facts)."""
    m = record.get("machine") or {}
    if not isinstance(m, dict):
        return None
    return m.get("cuda_device") or m.get("cpu_model") or None


def _device_type(record: dict) -> str | None:
    """"cpu" or "cuda" from the recorded device: the engine writes "cpu (...)" on the CPU and
    the card's name on CUDA, its only two devices (benchmark.training.run.resolve_device)."""
    device = record.get("device")
    if not isinstance(device, str) or not device:
        return None
    return "cpu" if device == "cpu" or device.startswith("cpu ") else "cuda"


def _curve_rows(record: dict, run: dict) -> list[dict[str, Any]]:
    curves = record.get("curves") or {}
    iterations = curves.get("iteration") or []
    rows = []
    for i, it in enumerate(iterations):
        row = {k: run[k] for k in ("run_id", "label", "dataset", "model", "seed")}
        row["iteration"] = it
        for metric in CURVE_METRICS:
            values = curves.get(metric) or []
            row[metric] = _num(values[i]) if i < len(values) else math.nan
        rows.append(row)
    return rows


def _record_problem(record: Any) -> str | None:
    """Why a parsed JSON document is not a usable record (None when it is)."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    if isinstance(record["final"], dict) and "val_error" in record["final"]:
        # a tuning-stage run (data.validation): its error is not a test error (benchmark/tuning.py)
        return "a validation-split record (data.validation), not a test result"
    return None


def build_store(results_dir: str | Path, skipped: list[tuple[Path, str]] | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) from every valid record under ``results_dir/runs``.

    A file that is not a valid record is left out and appended to ``skipped`` as (path,
    reason); so is a second record with a run id already seen. ``null`` in place of a number
    (a diverged run's NaN written as strict JSON) reads as NaN. In the results of a tuned
    suite, each method's ``protocol_hash`` leaves out the protocol fields its tuning chose
    (:func:`tuned_protocol_fields`).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"results directory '{root}' does not exist")
    tuned = tuned_protocol_fields(root)
    runs, curves, seen = [], [], {}
    skipped = skipped if skipped is not None else []
    for path in record_files(root):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            skipped.append((path, f"unreadable JSON ({type(exc).__name__})"))
            continue
        problem = _record_problem(record)
        if problem is None and read_version(record, path) is None:
            problem = (f"record format {record['schema_version']} without its fields "
                       f"({', '.join(FIELDS_SINCE_2)})")
        if problem is None and record["run_id"] in seen:
            problem = f"duplicate of run {record['run_id']} in {seen[record['run_id']]}"
        if problem is None:
            try:
                run = _run_row(record, path.relative_to(root).as_posix(), tuned)
                rows = _curve_rows(record, run)
                _typed([run], RUNS_SCHEMA), _typed(rows, CURVES_SCHEMA)  # wrong types fail here
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                problem = f"a field has the wrong type ({exc})"
        if problem is not None:
            skipped.append((path, problem))
            continue
        seen[record["run_id"]] = path.name
        runs.append(run)
        curves.extend(rows)
    return _typed(runs, RUNS_SCHEMA), _typed(curves, CURVES_SCHEMA)


def save_store(results_dir: str | Path, out_dir: str | Path | None = None, *,
               tables: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> dict[str, Path]:
    """Write runs/curves as .parquet and .csv (atomic) under ``out_dir`` (default
    ``<results_dir>/store``): ``tables`` when given, else the store built from the records.
    Returns the written paths by name."""
    runs, curves = tables if tables is not None else build_store(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / STORE_DIR
    written = {}
    for name, df in (("runs", runs), ("curves", curves)):
        buf = io.BytesIO()
        df.to_parquet(buf, engine="pyarrow", index=False)
        atomic_write(out / f"{name}.parquet", buf.getvalue())
        atomic_write(out / f"{name}.csv", df.to_csv(index=False).encode())
        written[f"{name}.parquet"], written[f"{name}.csv"] = out / f"{name}.parquet", out / f"{name}.csv"
    return written


def store_losses(store_dir: str | Path, runs: pd.DataFrame) -> list[str]:
    """Run ids of the store at ``store_dir`` that ``runs`` lacks (writing ``runs`` there would
    lose them); [] when there is no readable store."""
    try:
        old = pd.read_parquet(Path(store_dir) / "runs.parquet", engine="pyarrow",
                              columns=["run_id"])
    except (OSError, ValueError, ImportError):
        return []
    return sorted(set(old["run_id"].dropna().astype(str)) - set(runs["run_id"].astype(str)))


def load_store(path: str | Path, *, fmt: str = "parquet") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) from a store directory, or a results directory (its ``store/``, or built
    from its records when it has none). ``fmt``: "parquet" or "csv"."""
    path = Path(path)
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"store format '{fmt}' is not one of parquet, csv")
    store = path / STORE_DIR if (path / STORE_DIR).is_dir() else path
    if not (store / f"runs.{fmt}").is_file():
        if record_files(path):
            return build_store(path)
        raise ConfigError(f"no results store at '{path}' (run save_store first)")
    tables = []
    for name, schema in (("runs", RUNS_SCHEMA), ("curves", CURVES_SCHEMA)):
        file = store / f"{name}.{fmt}"
        if fmt == "parquet":
            df = pd.read_parquet(file, engine="pyarrow")
        else:
            df = pd.read_csv(file, dtype=schema, keep_default_na=False, na_values=[""])
        for column in schema:  # an older store lacks newer columns
            if column not in df:
                df[column] = pd.Series(dtype=schema[column])
        tables.append(df.astype(schema))
    return tables[0], tables[1]


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def filter_runs(
    runs: pd.DataFrame,
    *,
    suite: str | Iterable[str] | None = None,
    git_commit: str | Iterable[str] | None = None,
    status: str | Iterable[str] | None = None,
    run_ids: Iterable[str] | None = None,
    synthetic: bool | None = None,
    **columns: Any,
) -> pd.DataFrame:
    """Rows matching every given filter. ``git_commit`` matches by prefix (``"1a2b3c"``);
    ``run_ids`` selects a suite's runs exactly (``[s.run_id for s in suite.expand()]``), which
    also finds runs another suite recorded first; other keywords match columns
    (``dataset="cifar100"``, ``label=["MHE", "RP-CoMHE"]``)."""
    mask = pd.Series(True, index=runs.index)
    for column, value in (("suite", suite), ("status", status), *columns.items()):
        if column not in runs:
            raise ConfigError(f"filter on unknown column '{column}' (columns: {', '.join(runs)})")
        if (values := _as_list(value)) is not None:
            mask &= runs[column].isin(values).fillna(False).astype(bool)
    if (commits := _as_list(git_commit)) is not None:
        commit = runs["git_commit"].fillna("")
        mask &= pd.concat([commit.str.startswith(c) for c in commits], axis=1).any(axis=1)
    if run_ids is not None:
        mask &= runs["run_id"].isin(list(run_ids)).fillna(False).astype(bool)
    if synthetic is not None:
        mask &= (runs["synthetic"] == synthetic).fillna(False).astype(bool)
    return runs[mask]


def curves_for(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The curve rows of the given runs."""
    return curves[curves["run_id"].isin(runs["run_id"]).fillna(False).astype(bool)]
