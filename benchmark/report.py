"""Tables (Markdown, CSV, LaTeX), the paper comparison and the leaderboard.

Everything here renders the tidy statistics of :func:`benchmark.stats.compare_to_baseline`;
no statistic is computed here. Markdown and LaTeX come from jinja2 templates in
``benchmark/templates`` (no dependency on ``tabulate``). Files are written atomically.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from benchmark import stats

__all__ = [
    "DEFAULT_REPORTED", "SCHEDULES", "TABLE2_LABELS", "VERDICTS", "build_table", "format_cell",
    "load_reported", "paper_comparison", "power_note", "render_leaderboard", "schedule_of",
    "settings_match", "write_report", "write_tables",
]

TABLE2_LABELS = ["weight_decay", "so", "srip", "mhe", "hs_mhe", "rp_comhe", "ap_comhe",
                 "adv_comhe", "g_comhe"]
DEFAULT_REPORTED = Path(__file__).resolve().parents[1] / "results" / "paper" / "reported.yaml"
SCHEDULES = {75_000: "comhe_75k", 42_500: "mhe_42.5k"}  # iterations -> schedule name
VERDICTS = ("inside CI", "outside CI", "not comparable (schedule differs)",
            "unknown (no paper value)", "not reproduced (no runs)", "no CI (n<2)")
_TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def _atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _num(x: Any, nd: int = 2) -> str:
    return "–" if x is None or not np.isfinite(float(x)) else f"{float(x):.{nd}f}"


def _p(p: Any) -> str:
    ok = p is not None and np.isfinite(float(p))
    return "–" if not ok else "<0.001" if p < 0.001 else f"{p:.3g}"


def format_cell(mean: float, std: float, n: int, decimals: int = 2, pm: str = "±") -> str:
    """``"24.41 ± 0.21 (n=5)"``; ``"24.41 (n=1)"`` without a spread; ``"–"`` with no runs."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    if n < 2 or not np.isfinite(std):
        return f"{mean:.{decimals}f} (n={n})"
    return f"{mean:.{decimals}f} {pm} {std:.{decimals}f} (n={n})"


def power_note(n: int, family_size: int, alpha: float = 0.05) -> str:
    """One sentence on what an exact Wilcoxon test on n pairs can reach under Holm over
    ``family_size`` comparisons."""
    if n < 1:
        return "no paired comparison with the baseline (no shared seeds)."
    m = max(family_size, 1)
    pmin, thr = stats.min_p_wilcoxon(n), alpha / m
    head = f"n={n}: the exact Wilcoxon test cannot go below p={pmin:.3g}"
    if pmin > alpha:
        return f"{head}; no difference can be significant at this n (alpha={alpha})."
    if pmin > thr:
        return (f"{head}, above Holm's first threshold {alpha}/{m}={thr:.2g}; no difference "
                f"can be significant after correction at this n.")
    return (f"{head} <= {alpha}/{m}: significance is reachable, but a non-significant row is "
            f"weak evidence, not proof of no effect.")


def _label_order(labels: Iterable[str], baseline: str) -> list[str]:
    known = [lab for lab in dict.fromkeys([baseline, *TABLE2_LABELS]) if lab in set(labels)]
    return known + sorted(set(labels) - set(known))


def build_table(stats_df: pd.DataFrame, *, baseline: str = "weight_decay",
                alpha: float = 0.05) -> dict[str, Any]:
    """Arrange the tidy statistics as a labels x cells table.

    Args:
        stats_df: output of :func:`benchmark.stats.compare_to_baseline`.
    Returns:
        dict with ``labels`` (row order), ``columns`` (one dict per (dataset, model): name,
        power_note, noise and accuracy), ``cells`` ({(label, column name): stats row}),
        ``best`` ({column name: label set}), ``means`` (DataFrame labels x columns),
        ``ranks`` (Series), ``friedman`` (dict), ``synthetic`` and ``metric``.
    """
    metric = str(stats_df["metric"].iloc[0]) if len(stats_df) else "test_error"
    higher = "acc" in metric
    df = stats_df.assign(column=stats_df["dataset"].astype(str) + " / " +
                         stats_df["model"].astype(str))
    labels = _label_order(df["label"].astype(str), baseline)
    columns, cells, best = [], {}, {}
    for name, col in df.groupby("column", sort=True):
        for _, r in col.iterrows():
            cells[(r["label"], name)] = r
        means = col.set_index("label")["mean"].dropna()
        if len(means):
            target = means.max() if higher else means.min()
            best[name] = set(means.index[np.isclose(means, target, rtol=0, atol=1e-12)])
        others = col[~col["is_baseline"]]
        n_pairs = int(others["n_pairs"].min()) if len(others) else 0
        family = int(col["family_size"].max()) if len(col) else 0
        n_test = col["n_test"].max()
        base = col[col["is_baseline"]]
        acc = float(base["mean_acc"].iloc[0]) if len(base) else float(col["mean_acc"].mean())
        noise = stats.binomial_noise_floor(acc, n_test) \
            if np.isfinite(acc) and np.isfinite(n_test) and n_test > 0 else math.nan
        columns.append({
            "name": name, "dataset": col["dataset"].iloc[0], "model": col["model"].iloc[0],
            "n_pairs": n_pairs, "family_size": family, "noise": noise,
            "power_note": power_note(n_pairs, family, alpha),
            "n_test_text": f"{int(n_test):,}" if np.isfinite(n_test) else "?",
            "noise_text": f"±{noise:.2f}" if np.isfinite(noise) else "unknown",
            "acc_text": f"{acc:.1f}" if np.isfinite(acc) else "",
        })
    means = df.pivot_table(index="label", columns="column", values="mean", aggfunc="first")
    means = means.reindex(index=labels)
    return {"labels": labels, "columns": columns, "cells": cells, "best": best, "means": means,
            "ranks": stats.average_ranks(means, higher_is_better=higher),
            "friedman": stats.friedman(means), "synthetic": bool(df["synthetic"].any()),
            "metric": metric, "baseline": baseline, "alpha": alpha}


def _cell_text(t: dict, label: str, col: str, style: str) -> str:
    r = t["cells"].get((label, col))
    if r is None:
        return "–"
    text = format_cell(r["mean"], r["std"], int(r["n"]), pm="$\\pm$" if style == "tex" else "±")
    if text == "–":
        return text
    marks = ("*" if r["sig_wilcoxon"] else "") + ("†" if r["sig_ttest"] else "")
    if style == "tex":
        text = f"\\textbf{{{text}}}" if label in t["best"].get(col, ()) else text
        tex_marks = marks.replace("†", "\\dagger")
        return text + (f"$^{{{tex_marks}}}$" if marks else "")
    if style == "md":
        text = f"**{text}**" if label in t["best"].get(col, ()) else text
        marks = marks.replace("*", "\\*")
    return text + (f" {marks}" if marks else "")


def _caption(t: dict) -> str:
    kind = "error" if "error" in t["metric"] else t["metric"]
    return (f"Final-iteration test {kind} (%) per label (rows) and dataset / model (columns): "
            f"mean ± sample standard deviation (ddof=1) over seeds, n = number of seeds. "
            f"Tests compare each row with `{t['baseline']}` on the seeds both have, Holm-"
            f"corrected over the rows of the column.")


def _legend(t: dict) -> str:
    return (f"\\* Holm-adjusted Wilcoxon signed-rank p < {t['alpha']}; † Holm-adjusted paired "
            f"t-test p < {t['alpha']}. No marker means the test did not reject, which at small n "
            f"is expected even for a real effect (see below).")


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"),
                 ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$"),
                 ("†", r"$^\dagger$")):
        s = s.replace(a, b)
    return s


def write_tables(stats_df: pd.DataFrame, out_dir: str | Path, *, stem: str = "table",
                 baseline: str = "weight_decay", alpha: float = 0.05,
                 title: str | None = None) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` (formatted cells), ``<stem>.tex`` and
    ``<stem>_stats.csv`` (the tidy numbers) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    t = build_table(stats_df, baseline=baseline, alpha=alpha)
    names = [c["name"] for c in t["columns"]]
    title = title or ("Test error by regularizer" + (" (SYNTHETIC)" if t["synthetic"] else ""))
    md_rows = [[lab, *[_cell_text(t, lab, c, "md") for c in names]] for lab in t["labels"]]
    ranks_rows = [[lab, f"{v:.2f}"] for lab, v in t["ranks"].dropna().items()]
    fr = t["friedman"]
    fr_text = (f"chi2 = {fr['statistic']:.3f}, p = {_p(fr['pvalue'])} over {fr['n_labels']} "
               f"labels and {fr['n_cells']} cells." if fr["reason"] is None
               else f"not computed: {fr['reason']}.")
    md = _env().get_template("table.md.j2").render(
        title=title, synthetic=t["synthetic"], caption=_caption(t), legend=_legend(t),
        header=["label", *names], rows=md_rows, columns=t["columns"], ranks_rows=ranks_rows,
        n_cells=len(names), friedman_text=fr_text)
    csv = pd.DataFrame([[lab, *[_cell_text(t, lab, c, "csv") for c in names]]
                        for lab in t["labels"]], columns=["label", *names])
    notes = " ".join(f"{c['name']}: {c['power_note']} Binomial noise floor {c['noise_text']} "
                     f"points." for c in t["columns"])
    caption = _tex_escape(_caption(t) + " " + _legend(t).replace("\\*", "*") + " " +
                          "Bold: best mean. " + notes)
    caption = re.sub(r"`([^`]*)`", r"\\texttt{\1}", caption)
    tex = _env().get_template("table.tex.j2").render(
        caption=caption, header=[_tex_escape(h) for h in ["label", *names]],
        rows=[[_tex_escape(lab), *[_cell_text(t, lab, c, "tex") for c in names]]
              for lab in t["labels"]])
    return [_atomic_write_text(out / f"{stem}.md", md),
            _atomic_write_text(out / f"{stem}.csv", csv.to_csv(index=False)),
            _atomic_write_text(out / f"{stem}.tex", tex),
            _atomic_write_text(out / f"{stem}_stats.csv", stats_df.to_csv(index=False))]


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


def _run_settings(runs: pd.DataFrame) -> pd.Series:
    """Each run's resolved settings: ``regularizer``, ``protocol`` and every hyper-parameter as
    ``reg.hparams`` resolves it (defaults filled by THIS checkout's code: the store keeps the
    hyper-parameters the spec gave, not the record's ``regularizer_hparams_resolved``). None
    when the regularizer cannot be resolved here (an unloaded plugin, a removed parameter)."""
    from regularizers.registry import get

    def resolve(row):
        try:
            hp = get(str(row["regularizer"])).resolve_hparams(
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
             settings: pd.Series) -> pd.Series | list:
    """Which runs answer for a reported entry: those whose resolved settings match ALL the
    entry's recorded ones, or, for an entry that records none, those answering to its label."""
    if not len(runs):
        return []
    recorded = entry.get("settings")
    if isinstance(recorded, dict):
        return settings.apply(lambda run: settings_match(recorded, run))
    return names.apply(lambda n, lab=entry["label"]: lab in n)


def paper_comparison(runs_df: pd.DataFrame, reported_df: pd.DataFrame,
                     protocol_schedule: str | None = None, *,
                     include_synthetic: bool = False) -> pd.DataFrame:
    """Paper value next to the reproduced mean and 95% t CI, with a verdict.

    Args:
        runs_df: the store's ``runs`` table. The reproduced metric is the reported row's
            ``metric`` column, over runs with the same dataset and model whose resolved
            settings match every setting the entry records (:func:`settings_match`; an entry
            without ``settings``: runs answering to its label).
        reported_df: from :func:`load_reported`.
        protocol_schedule: the reproduction's schedule; None infers it from ``iterations``.
    Returns:
        one row per reported entry: the reported columns (``value`` renamed ``paper``) plus
        ``reproduced_schedule, n, mean, ci_low, ci_high, difference`` (mean - paper), ``verdict``
        (one of ``VERDICTS``).
    """
    runs = stats.select_runs(runs_df, include_synthetic=include_synthetic)
    names, settings = _run_names(runs), _run_settings(runs)
    rows = []
    for _, e in reported_df.iterrows():
        answers = _answers(e, runs, names, settings)
        grp = runs[(runs["dataset"] == e["dataset"]) & (runs["model"] == e["model"]) & answers]
        sched = protocol_schedule
        if sched is None and len(grp) and "iterations" in grp:
            sched = schedule_of(grp["iterations"].mode().iloc[0])
        vals = grp.groupby("seed")[e["metric"]].mean() if len(grp) else pd.Series(dtype=float)
        s = stats.cell_summary(vals.to_numpy())
        paper = float(e["value"])
        if not np.isfinite(paper):
            verdict = "unknown (no paper value)"
        elif sched is not None and e["schedule"] != sched:
            verdict = "not comparable (schedule differs)"
        elif s["n"] == 0:
            verdict = "not reproduced (no runs)"
        elif s["n"] < 2:
            verdict = "no CI (n<2)"
        else:
            inside = s["ci_t_low"] <= paper <= s["ci_t_high"]
            verdict = "inside CI" if inside else "outside CI"
        rows.append({**{k: e[k] for k in _REPORTED_COLUMNS if k != "value"}, "paper": paper,
                     "reproduced_schedule": sched, "n": s["n"], "mean": s["mean"],
                     "ci_low": s["ci_t_low"], "ci_high": s["ci_t_high"],
                     "difference": s["mean"] - paper, "verdict": verdict,
                     "synthetic": bool(grp["synthetic"].any()) if "synthetic" in grp else False})
    return pd.DataFrame(rows)


def _write_paper_comparison(comp: pd.DataFrame, out: Path, schedule: str | None) -> list[Path]:
    header = ["source", "schedule", "dataset / model", "label", "metric", "paper (runs)",
              "reproduced mean [95% CI] (n)", "difference", "verdict"]
    rows = [[str(r["source"]).replace("|", "/"),
             str(r["schedule"]) if pd.notna(r["schedule"]) else "unknown",
             f"{r['dataset']} / {r['model']}", r["label"], r["metric"],
             f"{_num(r['paper'])} ({int(r['n_runs']) if pd.notna(r['n_runs']) else '?'})",
             f"{_num(r['mean'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}] (n={r['n']})",
             _num(r["difference"]), r["verdict"]] for _, r in comp.iterrows()]
    md = _env().get_template("paper_comparison.md.j2").render(
        header=header, rows=rows, schedule_text=schedule or "inferred from each run's iterations",
        synthetic=bool(comp["synthetic"].any()) if len(comp) else False)
    return [_atomic_write_text(out / "paper_comparison.md", md),
            _atomic_write_text(out / "paper_comparison.csv", comp.to_csv(index=False))]


# --- leaderboard ------------------------------------------------------------------------------

def _code_version(grp: pd.DataFrame) -> str:
    commits = sorted({str(c)[:7] for c in grp.get("git_commit", pd.Series()).dropna() if str(c)})
    dirty = "git_dirty" in grp and bool(grp["git_dirty"].fillna(False).astype(bool).any())
    return (", ".join(commits) or "?") + (" +dirty" if dirty else "")


def render_leaderboard(runs_df: pd.DataFrame, out_path: str | Path = "results/leaderboard.md",
                       *, baseline: str = "weight_decay", metric: str = "test_error",
                       include_synthetic: bool = True, alpha: float = 0.05) -> Path:
    """Render the leaderboard Markdown from the ``runs`` table (template
    ``leaderboard.md.j2``): one section per (dataset, model), rows sorted by mean ``metric``."""
    runs = stats.select_runs(runs_df, include_synthetic=include_synthetic)
    table = stats.compare_to_baseline(runs, baseline=baseline, metric=metric,
                                      include_synthetic=True, alpha=alpha)
    sections = []
    for (dataset, model), cell in table.groupby(["dataset", "model"], sort=True):
        cell = cell.sort_values("mean", ascending="acc" not in metric, na_position="last")
        rows = []
        for rank, (_, r) in enumerate(cell.iterrows(), start=1):
            grp = runs[(runs["dataset"] == dataset) & (runs["model"] == model) &
                       (runs["label"] == r["label"])]
            ci = f"[{_num(r['ci_t_low'])}, {_num(r['ci_t_high'])}]" if r["n"] > 1 else "(n=1)"
            diff = "baseline" if r["is_baseline"] else (
                f"{_num(r['mean_diff'], 2)} [{_num(r['diff_ci_low'])}, {_num(r['diff_ci_high'])}]"
                f" (pairs={r['n_pairs']})")
            rows.append([str(rank), f"`{r['label']}`", str(r["n"]), f"{_num(r['mean'])} {ci}",
                         diff, _p(r["p_wilcoxon"]), _p(r["p_wilcoxon_holm"]),
                         _code_version(grp), "yes" if r["synthetic"] else "no"])
        others = cell[~cell["is_baseline"]]
        n_pairs = int(others["n_pairs"].min()) if len(others) else 0
        noise = cell["noise_floor"].dropna()
        sections.append({
            "dataset": dataset, "model": model, "rows": rows,
            "synthetic": bool(cell["synthetic"].any()),
            "power_note": power_note(n_pairs, int(cell["family_size"].max()), alpha),
            "noise_text": (f"±{noise.median():.2f} points (binomial SE of one run's accuracy on "
                        f"{int(cell['n_test'].max()):,} test images)") if len(noise)
            else "unknown (n_test missing)"})
    header = ["#", "label", "n", f"mean {metric} ± 95% CI", f"Δ vs {baseline} [95% CI]",
              "p (Wilcoxon)", "p (Holm)", "code", "synthetic"]
    md = _env().get_template("leaderboard.md.j2").render(
        sections=sections, header=header, metric=metric, baseline=baseline, n_runs=len(runs),
        any_synthetic=any(s["synthetic"] for s in sections))
    return _atomic_write_text(Path(out_path), md)


# --- everything -------------------------------------------------------------------------------

def write_report(runs_df: pd.DataFrame, curves_df: pd.DataFrame | None, out_dir: str | Path,
                 reported_df: pd.DataFrame | None = None, schedule: str | None = None, *,
                 baseline: str = "weight_decay", metric: str = "test_error",
                 include_synthetic: bool | None = None, plots: bool = True) -> list[Path]:
    """Write tables (md/csv/tex + tidy stats), plots and the paper comparison into ``out_dir``.

    Args:
        include_synthetic: None = use real runs when there are any, else the synthetic ones
            (smoke runs), which every output then marks as SYNTHETIC.
        reported_df: None loads ``results/paper/reported.yaml`` when it exists.
        schedule: the protocol's schedule for the paper comparison (None: from ``iterations``).
    Returns the written paths.
    """
    from benchmark import plots as _plots  # matplotlib only when plotting

    out = Path(out_dir)
    if include_synthetic is None:
        include_synthetic = stats.select_runs(runs_df).empty
    runs = stats.select_runs(runs_df, include_synthetic=include_synthetic)
    table = stats.compare_to_baseline(runs, baseline=baseline, metric=metric,
                                      include_synthetic=True)
    paths = write_tables(table, out, baseline=baseline)
    if plots and len(table):
        paths += _plots.plot_intervals(table, out / "intervals")
        if curves_df is not None and len(curves_df):
            curves = curves_df[curves_df["run_id"].isin(runs["run_id"])]
            paths += _plots.plot_training_dynamics(curves, out,
                                                   synthetic=bool(table["synthetic"].any()))
    if reported_df is None and DEFAULT_REPORTED.exists():
        reported_df = load_reported(DEFAULT_REPORTED)
    if reported_df is not None:
        comp = paper_comparison(runs, reported_df, schedule, include_synthetic=True)
        paths += _write_paper_comparison(comp, out, schedule)
    return paths
