"""The report: tables, plots, the paper comparison and the leaderboard of a set of runs.

:func:`prepare_report` computes every number (and refuses a set-up mix) before
:func:`write_report` writes the first file. Rendering is in :mod:`benchmark.analysis.tables`; the only
arithmetic here is the paper verdict (:func:`paper_verdict`). Files are written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats as sps

from benchmark.analysis import cells, power, stats, stats_across
from benchmark.analysis import plots as plotting
from benchmark.analysis.leaderboard import render_leaderboard, render_leaderboards  # noqa: F401
from benchmark.analysis.tables import (  # noqa: F401 - re-exported: the report's public names
    atomic_write,
    build_table,
    fmt_num,
    format_cell,
    md_escape,
    mixed_code_notes,
    noise_text,
    power_note,
    suggested_seeds,
    template_env,
    tex_escape,
    write_tables,
)
from regularizers import get as get_regularizer

__all__ = [
    "DEFAULT_REPORTED", "EQUIVALENCE_MARGIN", "POINT_VERDICTS", "SCHEDULES", "TABLE2_LABELS", "VERDICTS", "build_table",
    "format_cell", "load_reported", "md_escape", "paper_comparison", "paper_verdict",
    "power_note", "prepare_report", "render_leaderboard", "render_leaderboards", "schedule_of", "settings_match",
    "tex_escape",
    "write_report", "write_tables",
]

TABLE2_LABELS = cells.TABLE2_REGULARIZERS
DEFAULT_REPORTED = Path(__file__).resolve().parents[2] / "results" / "paper" / "reported.yaml"
SCHEDULES = {75_000: "comhe_75k", 42_500: "mhe_42.5k"}  # iterations -> schedule name
# Equivalence margin of the paper verdict, in percentage points of the metric.
EQUIVALENCE_MARGIN = 1.0
VERDICTS = ("shown equivalent within ±margin", "differs by less than the margin", "differs",
            "not shown equivalent", "not shown equivalent (no n can show it at this spread)",
            "not comparable (schedule differs)", "unknown (no paper value)", "no runs",
            "one run: no prediction interval")
POINT_VERDICTS = ("within the margin (point estimate)", "beyond the margin (point estimate)")


# --- paper comparison -------------------------------------------------------------------------

_REPORTED_COLUMNS = ["source", "schedule", "dataset", "model", "label", "metric", "value",
                     "n_runs", "note"]


def load_reported(path: str | Path = DEFAULT_REPORTED) -> pd.DataFrame:
    """Paper-reported values (``results/paper/reported.yaml`` or a CSV with the same columns).

    Returns:
        DataFrame with columns ``source, schedule, dataset, model, label, metric, value, n_runs,
        note, settings``; ``value`` is NaN where the number is unknown; ``settings`` is the dict
        of settings the value was made under (None when not recorded; a JSON string in a CSV).
    """
    path = Path(path)
    doc = {} if path.suffix == ".csv" else yaml.safe_load(path.read_text(encoding="utf-8"))
    df = pd.read_csv(path) if path.suffix == ".csv" else \
        pd.DataFrame([{**doc.get("defaults", {}), **e} for e in doc["entries"]])
    missing = [c for c in _REPORTED_COLUMNS if c not in df]
    if missing:
        raise ValueError(f"{path}: reported values lack column(s) {missing}; each entry needs "
                         f"{_REPORTED_COLUMNS}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    settings = df["settings"] if "settings" in df else pd.Series([None] * len(df), index=df.index)
    df["settings"] = settings.map(lambda v: json.loads(v) if isinstance(v, str) else
                                  (v if isinstance(v, dict) else None))
    return df[[*_REPORTED_COLUMNS, "settings"]]


def schedule_of(iterations: int) -> str:
    """Schedule name of a protocol's iteration count (75,000 -> "comhe_75k")."""
    return SCHEDULES.get(int(iterations), f"{int(iterations)}it")


def _run_names(runs: pd.DataFrame) -> pd.Series:
    """Names a run answers to in ``results/paper``: its label, its regularizer, and for MHE
    variants ``<regularizer>_<power>`` as the authors' logs are keyed (``mhe_s2``, ``hs_mhe_a0``;
    power 2 when the run left it at the default)."""
    def names(row) -> frozenset:
        out = {str(row.get("label", "")), str(row.get("regularizer", ""))}
        if row.get("regularizer") in ("mhe", "hs_mhe"):
            try:
                power = str(json.loads(row.get("hparams") or "{}").get("power", 2))
            except (TypeError, ValueError):
                power = "2"
            out.add(f"{row['regularizer']}_{'s' + power if power.isdigit() else power}")
        return frozenset(out)
    return runs.apply(names, axis=1) if len(runs) else pd.Series(dtype=object)


def paper_verdict(values: Sequence[float] | np.ndarray, paper: float, *,
                  margin: float = EQUIVALENCE_MARGIN, confidence: float = stats.CONFIDENCE,
                  bounds: tuple[float, float] = (0.0, 100.0)) -> dict[str, Any]:
    """Verdicts on one published run against our runs (docs/statistics.md, "Published single
    runs"), in two parts.

    ``point_verdict``: whether |mean - paper| <= ``margin`` (a point estimate, no test).
    ``verdict``: the tests. The prediction interval for ONE new run, mean ± t(n-1) s
    sqrt(1 + 1/n) (clipped to ``bounds``), is where a faithful single run lands with
    probability ``confidence``; outside it the paper differs. Equivalence is TOST, each
    one-sided test at 1 - ``confidence`` (size 0.05 at the margin), with the same SE (:func:`benchmark.analysis.power.equivalence_single_run`):
    shown equivalent within ±margin / differs by less than the margin (equivalent, yet outside
    the interval) / differs / not shown equivalent, with "(no n can show it at this spread)"
    when z s >= margin, one run: no prediction interval.

    Returns:
        dict with ``n, mean, pi_low, pi_high, difference`` (mean - paper), ``point_verdict``,
        ``p_tost``, ``equivalence_reachable``, ``verdict``.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    out = {"n": n, "mean": float(x.mean()) if n else math.nan, "pi_low": math.nan,
           "pi_high": math.nan, "difference": math.nan, "point_verdict": "", "p_tost": math.nan,
           "equivalence_reachable": None, "verdict": "no runs"}
    if not n:
        return out
    out["difference"] = out["mean"] - paper
    out["point_verdict"] = POINT_VERDICTS[int(abs(out["difference"]) > margin)]
    if n < 2:
        out["verdict"] = "one run: no prediction interval"
        return out
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * float(np.std(x, ddof=1)) * \
        math.sqrt(1 + 1 / n)
    out["pi_low"] = max(bounds[0], out["mean"] - half)
    out["pi_high"] = min(bounds[1], out["mean"] + half)
    inside = out["pi_low"] <= paper <= out["pi_high"]
    tost = power.equivalence_single_run(x, paper, margin=margin, alpha=1 - confidence)
    out["p_tost"], out["equivalence_reachable"] = tost["p_tost"], tost["reachable"]
    if tost["equivalent"]:
        out["verdict"] = VERDICTS[0] if inside else VERDICTS[1]
    elif not inside:
        out["verdict"] = VERDICTS[2]
    else:
        out["verdict"] = VERDICTS[3] if tost["reachable"] is not False else VERDICTS[4]
    return out


def _run_settings(runs: pd.DataFrame) -> pd.Series:
    """Each run's resolved settings: ``regularizer``, ``protocol`` and every hyper-parameter as
    ``reg.hparams`` resolves it (defaults filled by THIS checkout's code: the store keeps the
    hyper-parameters the spec gave, not the record's ``regularizer_hparams_resolved``). None
    when the regularizer cannot be resolved here (an unloaded plugin, a removed parameter)."""
    def resolve(row):
        try:
            hp = get_regularizer(str(row["regularizer"])).resolve_hparams(
                json.loads(row.get("hparams") or "{}"))
        except (ValueError, TypeError):
            return None
        return {**hp, "regularizer": row["regularizer"], "protocol": row.get("protocol")}
    return runs.apply(resolve, axis=1) if len(runs) else pd.Series(dtype=object)


def settings_match(recorded: dict, run: dict | None) -> bool:
    """True when every recorded setting equals the run's resolved one (a recorded list: any of
    its values). Numbers compare to 1e-9 relative, powers in canonical form ("2" is 2), booleans
    exactly; a setting the run lacks never matches."""
    if run is None:
        return False

    def same(want, got) -> bool:
        if isinstance(want, bool) or isinstance(got, bool):
            return isinstance(want, bool) and isinstance(got, bool) and want == got
        if isinstance(want, (int, float)) and isinstance(got, (int, float)):
            return math.isclose(want, got, rel_tol=1e-9, abs_tol=0.0)
        return str(want) == str(got)

    for key, want in recorded.items():
        if key not in run:
            return False
        options = want if isinstance(want, list) else [want]
        if not any(same(w, run[key]) for w in options):
            return False
    return True


def _answers(entry: pd.Series, runs: pd.DataFrame, names: pd.Series,
             settings: pd.Series) -> pd.Series:
    """Which runs answer for a reported entry: those whose resolved settings match ALL the
    entry's recorded ones, or, for an entry that records none, those answering to its label."""
    if not len(runs):  # (a list here broke `mask & answers` when no run was counted)
        return pd.Series(False, index=runs.index, dtype=bool)
    recorded = entry.get("settings")
    if isinstance(recorded, dict):
        return settings.apply(lambda run: settings_match(recorded, run))
    return names.apply(lambda n, lab=entry["label"]: lab in n)


def paper_comparison(runs_df: pd.DataFrame, reported_df: pd.DataFrame,
                     protocol_schedule: str | None = None, *, include_synthetic: bool = False,
                     include_stuck: bool = False, margin: float = EQUIVALENCE_MARGIN
                     ) -> pd.DataFrame:
    """Paper value next to the reproduced mean and a 95% prediction interval, with a verdict.

    Args:
        runs_df: the store's ``runs`` table. The counted runs (complete, and stuck when
            ``include_stuck``) give the values: the reported row's ``metric`` column, over
            runs with the same dataset and model whose resolved settings match every setting the entry records (:func:`settings_match`; an entry
            without ``settings``: runs answering to its label).
        reported_df: from :func:`load_reported`.
        protocol_schedule: the reproduction's schedule; None infers it from ``iterations``.
    Returns:
        one row per reported entry: the reported columns (``value`` renamed ``paper``) plus
        ``reproduced_schedule, n, mean, pi_low, pi_high, difference, point_verdict, p_tost,
        equivalence_reachable, margin, verdict`` (one of ``VERDICTS``), ``synthetic``.
    """
    runs = cells.select_runs(runs_df, include_synthetic=include_synthetic,
                             include_stuck=include_stuck)
    names, settings = _run_names(runs), _run_settings(runs)
    rows = []
    for _, e in reported_df.iterrows():
        answers = _answers(e, runs, names, settings)
        grp = runs[(runs["dataset"] == e["dataset"]) & (runs["model"] == e["model"]) & answers]
        sched = protocol_schedule
        if sched is None and len(grp) and "iterations" in grp:
            sched = schedule_of(grp["iterations"].mode().iloc[0])
        vals = grp.groupby("seed")[e["metric"]].mean() if len(grp) else pd.Series(dtype=float)
        paper = float(e["value"])
        v = paper_verdict(vals.to_numpy(), paper if np.isfinite(paper) else 0.0, margin=margin)
        if not np.isfinite(paper):
            v.update(verdict="unknown (no paper value)", difference=math.nan, point_verdict="",
                     p_tost=math.nan, equivalence_reachable=None)
        elif sched is not None and e["schedule"] != sched:
            v["verdict"] = "not comparable (schedule differs)"
        rows.append({**{k: e[k] for k in _REPORTED_COLUMNS if k != "value"}, "paper": paper,
                     "reproduced_schedule": sched, **v, "margin": margin,
                     "synthetic": bool(grp["synthetic"].any()) if "synthetic" in grp else False})
    return pd.DataFrame(rows)


def _write_paper_comparison(comp: pd.DataFrame, out: Path, schedule: str | None) -> list[Path]:
    header = ["source", "schedule", "dataset / model", "label", "metric", "paper (runs)",
              "reproduced mean [95% prediction interval] (n)", "difference",
              "point estimate", "p (TOST)", "verdict"]
    rows = [[md_escape(r["source"]),
             md_escape(r["schedule"]) if pd.notna(r["schedule"]) else "unknown",
             md_escape(f"{r['dataset']} / {r['model']}"), md_escape(r["label"]),
             md_escape(r["metric"]),
             f"{fmt_num(r['paper'])} ({int(r['n_runs']) if pd.notna(r['n_runs']) else '?'})",
             f"{fmt_num(r['mean'])} [{fmt_num(r['pi_low'])}, {fmt_num(r['pi_high'])}] (n={r['n']})",
             fmt_num(r["difference"]), r["point_verdict"] or "–", fmt_num(r["p_tost"], 3),
             md_escape(r["verdict"])] for _, r in comp.iterrows()]
    md = template_env().get_template("paper_comparison.md.j2").render(
        header=header, rows=rows, schedule_text=schedule or "inferred from each run's iterations",
        synthetic=bool(comp["synthetic"].any()) if len(comp) else False,
        margin=EQUIVALENCE_MARGIN if not len(comp) else float(comp["margin"].iloc[0]))
    return [atomic_write(out / "paper_comparison.md", md),
            atomic_write(out / "paper_comparison.csv", comp.to_csv(index=False))]


# --- everything -------------------------------------------------------------------------------

def prepare_report(runs_df: pd.DataFrame, *, baseline: str = "weight_decay",
                   metric: str = "test_error", include_synthetic: bool | None = None,
                   include_stuck: bool = False, allow_mixed_code: bool = False,
                   alpha: float = 0.05) -> dict[str, Any]:
    """Every number of the report, computed before anything is written (a set-up mix raises
    :class:`benchmark.analysis.cells.SetupError` here)."""
    if include_synthetic is None:
        include_synthetic = cells.select_runs(runs_df).empty and \
            cells.with_outcome(runs_df)["synthetic"].fillna(False).astype(bool).any()
    runs = cells.with_outcome(runs_df)
    if not include_synthetic and "synthetic" in runs:
        runs = runs[~runs["synthetic"].fillna(False).astype(bool)]
    table = cells.compare_to_baseline(runs, baseline=baseline, metric=metric,
                                      include_synthetic=True, include_stuck=include_stuck,
                                      alpha=alpha, declared=cells.declared_order(runs),
                                      allow_mixed_code=allow_mixed_code)
    counted = cells.select_runs(runs, include_synthetic=True, include_stuck=include_stuck)
    across = stats_across.across_cells(table, counted, baseline, metric, alpha) if len(table) \
        else None
    return {"runs": runs, "counted": counted, "table": table, "across": across,
            "notes": mixed_code_notes(table) if allow_mixed_code else [], "alpha": alpha,
            "baseline": baseline, "metric": metric, "include_stuck": include_stuck,
            "allow_mixed_code": allow_mixed_code,
            "suggested_seeds": suggested_seeds(table, alpha) if len(table) else None}


def _write_mean_class_table(runs_df: pd.DataFrame, out: Path, rep: dict[str, Any], baseline: str,
                            metric: str, allow_mixed_code: bool) -> list[Path]:
    """``table_mean_class_acc.*``: the same comparison on mean class accuracy (point-cloud runs,
    PointNet's "avg class acc"), written when the counted runs carry it; [] otherwise."""
    col = "test_mean_class_acc"
    counted = rep["counted"]
    if metric == col or col not in counted or not counted[col].notna().any():
        return []
    # the runs the main table counted (its synthetic / stuck / code-version choices made)
    rep_mc = prepare_report(runs_df[runs_df["run_id"].isin(counted["run_id"])],
                            baseline=baseline, metric=col, include_synthetic=True,
                            include_stuck=rep["include_stuck"],
                            allow_mixed_code=rep.get("allow_mixed_code", allow_mixed_code))
    if not len(rep_mc["table"]):
        return []
    synthetic = bool(rep_mc["table"]["synthetic"].any())
    return write_tables(rep_mc["table"], out, runs=rep_mc["runs"], across=rep_mc["across"],
                        alpha=rep_mc["alpha"], notes=rep_mc["notes"], stem="table_mean_class_acc",
                        title="Test mean class accuracy (%) by regularizer"
                              + (" (SYNTHETIC)" if synthetic else ""))


def write_report(runs_df: pd.DataFrame, curves_df: pd.DataFrame | None, out_dir: str | Path,
                 reported_df: pd.DataFrame | None = None, schedule: str | None = None, *,
                 baseline: str = "weight_decay", metric: str = "test_error",
                 include_synthetic: bool | None = None, include_stuck: bool = False,
                 allow_mixed_code: bool = False, plots: bool = True,
                 prepared: dict[str, Any] | None = None) -> list[Path]:
    """Write tables (md/csv/tex + tidy stats), plots and the paper comparison into ``out_dir``.

    Args:
        include_synthetic: None = use real runs when there are any, else the synthetic ones
            (smoke runs), which every output then marks as SYNTHETIC.
        reported_df: None loads ``results/paper/reported.yaml`` when it exists.
        schedule: the protocol's schedule for the paper comparison (None: from ``iterations``).
        prepared: the output of :func:`prepare_report` (computed here when None).
    Returns the written paths.
    """
    rep = prepared or prepare_report(runs_df, baseline=baseline, metric=metric,
                                     include_synthetic=include_synthetic,
                                     include_stuck=include_stuck,
                                     allow_mixed_code=allow_mixed_code)
    if reported_df is None and DEFAULT_REPORTED.exists():
        reported_df = load_reported(DEFAULT_REPORTED)
    comp = paper_comparison(rep["counted"], reported_df, schedule, include_synthetic=True,
                            include_stuck=rep["include_stuck"]) \
        if reported_df is not None else None
    out = Path(out_dir)
    table = rep["table"]
    paths = write_tables(table, out, runs=rep["runs"], across=rep["across"],
                         alpha=rep["alpha"], notes=rep["notes"])
    if comp is not None:
        paths += _write_paper_comparison(comp, out, schedule)
    paths += _write_mean_class_table(runs_df, out, rep, baseline, metric, allow_mixed_code)
    if plots and len(table):
        order = list(dict.fromkeys(table["label"].astype(str)))
        colors = plotting.method_colors(order)
        setups = {(c["dataset"], c["model"]): c["setup"]
                  for c in build_table(table, rep["runs"])["columns"]}
        paths += plotting.plot_intervals(table, out / "intervals", colors=colors, setups=setups)
        if curves_df is not None and len(curves_df):
            curves = curves_df[curves_df["run_id"].isin(rep["counted"]["run_id"])]
            paths += plotting.plot_training_dynamics(
                curves, out, synthetic=bool(table["synthetic"].any()), order=order,
                colors=colors, setups=setups)
    return paths


def write_tuning_page(choice: dict, out_dir: str | Path, plots: dict[tuple[str, str], str] | None = None
                      ) -> list[Path]:
    """``tuning.md``: per (dataset, model), every method's grid with its mean validation error
    over the tuning seeds, the chosen value, the validation-curve plot (``plots``: (dataset,
    model) -> path relative to ``out_dir``) and the paired spread that sizes the final stage
    (``choice["spread"]``, :func:`benchmark.analysis.choice.tuning_spread`)."""
    cells: dict[tuple, dict] = {}
    for c in choice.get("choices") or []:
        kwargs = c.get("model_kwargs") or {}
        cell = cells.setdefault((c["dataset"], c["model"], repr(sorted(kwargs.items()))), {
            "dataset": c["dataset"], "model": c["model"], "rows": [], "spread": None,
            "kwargs": f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "",
            "plot": (plots or {}).get((c["dataset"], c["model"]))})
        for g in c["grid"]:
            chosen = g["value"] == c.get("chosen")
            cell["rows"].append([md_escape(c["label"]), f"`{c['param']}`", f"{g['value']:g}",
                                 fmt_num(g.get("mean")), fmt_num(g.get("sd")), str(g["n"]),
                                 str(g.get("stuck", 0)), str(g.get("broken", 0)),
                                 "**chosen**" if chosen else ""])
    for sp in choice.get("spread") or []:
        key = (sp["dataset"], sp["model"], repr(sorted((sp.get("model_kwargs") or {}).items())))
        if key in cells and sp.get("sd_diff") is not None:
            seeds = lambda x: "-" if x is None else str(int(x))  # noqa: E731
            cells[key]["spread"] = {
                "baseline": md_escape(sp["baseline"]), "sd": fmt_num(sp["sd_diff"]),
                "df": sp["df"], "level": f"{sp['level']:.3g}", "seeds": seeds(sp.get("seeds")),
                "interval": f"[{seeds(sp.get('seeds_low'))}, {seeds(sp.get('seeds_high'))}]"}
    sizes = sorted({len(c["grid"]) for c in choice.get("choices") or []})
    md = template_env().get_template("tuning.md.j2").render(
        suite=choice.get("suite"), seeds=choice.get("seeds") or [], rule=choice.get("rule"),
        validation=f"{choice.get('validation_images'):,}", cells=list(cells.values()),
        grid_sizes=" / ".join(map(str, sizes)),
        header=["method", "parameter", "value", "mean validation error (%)", "SD", "runs",
                "stuck", "broken", "choice"])
    return [atomic_write(Path(out_dir) / "tuning.md", md)]
