"""The results store: every valid record of a results directory as two pandas tables.

``runs``: one row per record; ``curves``: one row per (run, evaluation). Columns and their
meaning are in docs/internals.md; the tables are derived data, rebuilt from ``runs/*.json`` at
any time. :func:`save_store` writes them to ``<results>/store/`` as Parquet (pyarrow) and CSV,
each file atomically. Records of several suites and code versions coexist; select with
:func:`filter_runs` (suite, git commit prefix, status, ...) and :func:`curves_for`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from benchmark.config import ConfigError
from benchmark.records import atomic_write_bytes, iter_records

STORE_DIR = "store"
RUNS_SCHEMA: dict[str, str] = {
    "schema_version": "Int64", "run_id": "string", "suite": "string", "label": "string",
    "dataset": "string", "model": "string", "regularizer": "string", "hparams": "string",
    "protocol": "string", "iterations": "Int64", "seed": "Int64", "status": "string",
    "reason": "string", "test_acc": "float64", "test_error": "float64", "train_loss": "float64",
    "penalty": "float64", "n_test": "Int64", "wall_time_s": "float64",
    "median_step_ms": "float64", "git_commit": "string", "git_dirty": "boolean",
    "device": "string", "torch_version": "string", "synthetic": "boolean", "record_path": "string",
}
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


def _run_row(record: dict, rel_path: str) -> dict[str, Any]:
    config, final = record.get("config") or {}, record.get("final") or {}
    protocol = config.get("protocol") or {}
    git, versions = record.get("git") or {}, record.get("versions") or {}
    return {
        "schema_version": record["schema_version"], "run_id": record["run_id"],
        "suite": record.get("suite"), "label": record.get("label") or config.get("regularizer"),
        "dataset": config.get("dataset"), "model": config.get("model"),
        "regularizer": config.get("regularizer"),
        "hparams": json.dumps(config.get("regularizer_hparams") or {}, sort_keys=True),
        "protocol": protocol.get("name"), "iterations": protocol.get("iterations"),
        "seed": record["seed"], "status": record["status"], "reason": record.get("reason"),
        **{k: _num(final.get(k)) for k in ("test_acc", "test_error", "train_loss", "penalty")},
        "n_test": final.get("n_test"), "wall_time_s": _num(record.get("wall_time_s")),
        "median_step_ms": _num(record.get("median_step_ms")), "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"), "device": record.get("device"),
        "torch_version": versions.get("torch"), "synthetic": bool(record.get("synthetic")),
        "record_path": rel_path,
    }


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


def build_store(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) from every valid record under ``results_dir/runs`` (invalid ones skipped)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"results directory '{root}' does not exist")
    runs, curves = [], []
    for path, record in iter_records(root):
        run = _run_row(record, path.relative_to(root).as_posix())
        runs.append(run)
        curves.extend(_curve_rows(record, run))
    return _typed(runs, RUNS_SCHEMA), _typed(curves, CURVES_SCHEMA)


def save_store(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Build the store and write runs/curves as .parquet and .csv (atomic) under ``out_dir``
    (default ``<results_dir>/store``). Returns the written paths by name."""
    runs, curves = build_store(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / STORE_DIR
    written = {}
    for name, df in (("runs", runs), ("curves", curves)):
        buf = io.BytesIO()
        df.to_parquet(buf, engine="pyarrow", index=False)
        atomic_write_bytes(out / f"{name}.parquet", buf.getvalue())
        atomic_write_bytes(out / f"{name}.csv", df.to_csv(index=False).encode())
        written[f"{name}.parquet"], written[f"{name}.csv"] = out / f"{name}.parquet", out / f"{name}.csv"
    return written


def load_store(path: str | Path, *, fmt: str = "parquet") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) from a store directory, or a results directory (its ``store/``, or built
    from its records when it has none). ``fmt``: "parquet" or "csv"."""
    path = Path(path)
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"store format '{fmt}' is not one of parquet, csv")
    store = path / STORE_DIR if (path / STORE_DIR).is_dir() else path
    if not (store / f"runs.{fmt}").is_file():
        if (path / "runs").is_dir():
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
