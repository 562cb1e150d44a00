"""Markdown / CSV / LaTeX rendering of the comparison table (the leaderboard:
:mod:`benchmark.analysis.leaderboard`).

Renders the tidy table of :func:`benchmark.analysis.cells.compare_to_baseline` and the across-cell
analysis of :mod:`benchmark.analysis.stats_across` through the jinja2 templates in
``benchmark/analysis/templates``; its only statistics are the table's pooled power and seed estimate
(:func:`benchmark.analysis.power.table_power`). Every label is escaped for the format it is
rendered in (:func:`md_escape`, :func:`tex_escape`). Files are written atomically.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from benchmark.analysis import cells, power, stats
from benchmark.records import atomic_write

__all__ = ["build_table", "column_values", "diff_text", "fmt_ci", "fmt_num", "fmt_p",
           "format_cell", "md_escape", "mixed_code_notes", "noise_text", "pooled_power_text", "power_note",
           "suggested_seeds", "tex_escape", "wilcoxon_shown", "write_tables"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def template_env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


# --- escaping and number formatting -----------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$])")


def md_escape(text: Any) -> str:
    """``text`` as literal Markdown table content: special characters backslash-escaped, line
    breaks as spaces (a label cannot break a table row or start a formula)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "–": "--", "≥": r"$\geq$",
        "≤": r"$\leq$"}


def tex_escape(text: Any) -> str:
    """``text`` as literal LaTeX (one pass, so an escape is never escaped again)."""
    return "".join(_TEX.get(ch, ch) for ch in " ".join(str(text).split()))


def fmt_num(x: Any, nd: int = 2) -> str:
    try:
        ok = x is not None and np.isfinite(float(x))
    except (TypeError, ValueError):
        ok = False
    return f"{float(x):.{nd}f}" if ok else "–"


def fmt_p(p: Any) -> str:
    ok = p is not None and np.isfinite(float(p))
    return "–" if not ok else "<0.001" if p < 0.001 else f"{p:.3g}"


def fmt_ci(lo: Any, hi: Any, nd: int = 2) -> str:
    return f"[{fmt_num(lo, nd)}, {fmt_num(hi, nd)}]" if np.isfinite(float(lo)) else "(no interval)"


def format_cell(mean: float, std: float, n: int, decimals: int = 2, pm: str = "±") -> str:
    """``"24.41 ± 0.21 (n=5)"``; ``"24.41 (n=1)"`` without a spread; ``"–"`` with no runs."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    if n < 2 or not np.isfinite(std):
        return f"{mean:.{decimals}f} (n={n})"
    return f"{mean:.{decimals}f} {pm} {std:.{decimals}f} (n={n})"


# --- notes derived from the tests ---------------------------------------------------------------

def wilcoxon_shown(col: pd.DataFrame) -> bool:
    """Whether the Wilcoxon column can reject anywhere in ``col``: some row's exact p floor
    2 / 2^pairs is at or below Holm's first threshold. Otherwise the column is not printed."""
    return bool(col["wilcoxon_reachable"].astype(bool).any()) if len(col) else False


def power_note(col: pd.DataFrame, alpha: float = 0.05, metric: str = "test_error") -> str:
    """What the column's tests can show: the primary paired t-test (Holm over the table's m
    tests, first threshold alpha/m), its minimum detectable paired difference at 80% power from
    the column's pooled SD of the differences, and whether the Wilcoxon column can reject."""
    others = col[~col["is_baseline"].astype(bool)]
    pairs = others["n_pairs"].fillna(0).astype(int)
    if not len(others) or pairs.max() < 1:
        return "No paired comparison with the baseline (no shared seeds)."
    m = int(col["family_size"].max()) if len(col) else 0
    n = int(pairs.min())
    level = alpha / max(m, 1)
    head = (f"Primary test: paired t on {n}{'+' if pairs.max() > n else ''} seeds, Holm over "
            f"the table's {m} test(s) (first threshold {alpha}/{max(m, 1)} = {level:.2g}).")
    mdd, sd, df = (float(col[k].iloc[0]) for k in ("mdd", "sd_diff_pooled", "df_pooled"))
    testable = pairs[pairs >= 2]
    if not len(testable):
        reach = " With fewer than 2 pairs no test is possible."
    elif np.isfinite(mdd):
        reach = (f" Minimum detectable paired difference: {mdd:.2f} points (80% power at that "
                 f"level on {int(testable.min())} pairs, pooled SD of the paired differences "
                 f"{sd:.2f} over this column's rows, {int(df)} df). Smaller true differences are "
                 f"more likely missed than found, so a row without † is no evidence of no "
                 f"difference.")
    else:
        reach = (" No minimum detectable difference: no row has paired differences with a "
                 "spread (the t-test is undefined).")
    most = int(pairs.max())  # the row that comes closest to the Wilcoxon's floor
    floor = stats.min_p_wilcoxon(most)
    basis = cells.wilcoxon_basis(metric)
    wil = (f" Wilcoxon (robustness, exact, on {basis}): on {most} pairs its p cannot go below "
           f"2/2^{most} = {floor:.3g}, above {level:.2g}, so it cannot reject and its column is "
           f"left out." if not wilcoxon_shown(col) else
           f" Wilcoxon (robustness, exact, on {basis}): its p cannot go below 2/2^k on k "
           f"non-zero pairs ({floor:.3g} at k = {most}).")
    return head + reach + wil


def noise_text(col: pd.DataFrame, metric: str = "test_error") -> str:
    noise = col["noise_floor"].dropna()
    n_test = col["n_test"].max()
    if not len(noise) or not np.isfinite(n_test):
        return "Test-set sampling error: unknown (n_test missing)."
    if metric not in cells.COUNT_METRICS:  # the binomial SE is that of an overall accuracy
        return (f"Test-set sampling error of one run's overall accuracy (binomial SE on "
                f"{int(n_test):,} test examples): ±{noise.iloc[0]:.2f} points; a mean of "
                f"per-class rates over small classes varies more.")
    return (f"Test-set sampling error of one run's accuracy (binomial SE on {int(n_test):,} "
            f"images): ±{noise.iloc[0]:.2f} points. It is not the noise of a difference between "
            f"two models on the same images; the part of a difference that seeds cannot "
            f"remove is the image-level component (report table).")


def suggested_seeds(table: pd.DataFrame, alpha: float = 0.05) -> int | None:
    """The pooled seed estimate of the whole table (:func:`benchmark.analysis.power.table_power`):
    seeds to detect DETECT_POINTS at Holm's first threshold; None when unknown."""
    seeds = power.table_power(table, alpha)["seeds"]["seeds"] if len(table) else np.nan
    return int(seeds) if np.isfinite(seeds) else None


def pooled_power_text(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """The table's pooled minimum detectable difference and seed estimate, as a sentence."""
    tp = power.table_power(table, alpha)
    se = tp["seeds"]
    if not np.isfinite(tp["sd"]):
        return "Pooled over the table: no spread of paired differences to size anything from."
    text = (f"Pooled over the table's rows (SD of the paired differences {tp['sd']:.2f}, "
            f"{tp['df']} df): minimum detectable paired difference {fmt_num(tp['mdd'])} points "
            f"at {tp['n']} pairs (80% power at {tp['level']:.2g}).")
    if np.isfinite(se["seeds"]):
        text += (f" Seeds to detect {power.DETECT_POINTS} points with 80% power at that level: "
                 f"{int(se['seeds'])} [{int(se['seeds_low'])}, {int(se['seeds_high'])}] (95% "
                 f"interval from the pooled SD's chi-square interval).")
    if np.isfinite(se["floor_seeds"]):
        text += (f" Per-image churn alone (SD {se['floor_sd']:.2f} from `final_correct`) puts "
                 f"the floor at {int(se['floor_seeds'])} seeds"
                 + ("; the estimate is raised to it." if se["floored"] else "."))
    return text


# --- the comparison table -----------------------------------------------------------------------

def column_values(runs: pd.DataFrame, col: str) -> str | None:
    """The distinct values of one column of ``runs``, sorted and joined; None if absent/empty."""
    if col not in runs:
        return None
    vals = sorted(runs[col].dropna().astype(str).unique())
    return ", ".join(vals) if vals else None


def _setup_text(runs: pd.DataFrame) -> str:
    """The set-up of one column's runs (checked uniform by cells.check_setup)."""
    one = functools.partial(column_values, runs)

    parts = []
    if (proto := one("protocol")) is not None:
        parts.append(f"protocol {proto}" + (f" ({one('protocol_hash')})"
                                            if one("protocol_hash") else ""))
    if (kw := one("model_kwargs")) not in (None, "{}"):
        parts.append(f"model {kw}")
    for col, name in (("code", "code"), ("packed_seeds", "packed seeds"), ("dtype", "dtype"),
                      ("threads", "threads")):
        if (v := one(col)) is not None:
            parts.append(f"{name} {v}")
    if "code" not in runs and (commits := cells.code_versions(runs)):
        parts.append("code " + ", ".join(commits))
    return "; ".join(parts) or "set-up not recorded"


def _outcome_suffix(r: pd.Series) -> str:
    """Non-counted runs of a row, shown in the cell itself."""
    bits = []
    if r["n_diverged"]:
        at = ", ".join(str(i) for i in r["diverged_at"])
        bits.append(f"{r['n_diverged']} diverged" + (f" at it. {at}" if at else ""))
    for o in ("stuck", "failed"):
        if r["n_" + o]:
            bits.append(f"{r['n_' + o]} {o}")
    return "; ".join(bits)


def _cell_text(r: pd.Series | None, style: str) -> str:
    if r is None:
        return "–"
    text = format_cell(r["mean"], r["std"], int(r["n"]))
    extra = _outcome_suffix(r)
    if extra:
        text = f"{text} ({extra})" if text != "–" else f"– (0 counted; {extra})"
    marks = ("†" if r["sig_ttest"] else "") + ("*" if r["sig_wilcoxon"] else "")
    if style == "md":
        return md_escape(text) + (f" {md_escape(marks)}" if marks else "")
    if style == "tex":
        return tex_escape(text) + (f"$^{{{marks.replace('†', chr(92) + 'dagger')}}}$"
                                   if marks else "")
    return text + (f" {marks}" if marks else "")


def build_table(table: pd.DataFrame, runs: pd.DataFrame | None = None,
                alpha: float = 0.05) -> dict[str, Any]:
    """Arrange the tidy table as labels x columns.

    Returns:
        dict with ``labels`` (row order: the table's, baseline first), ``columns`` (one dict per
        (dataset, model): name, setup, power_note, noise_text, rows), ``cells`` ({(label,
        column name): tidy row}), ``synthetic``, ``metric``.
    """
    metric = str(table["metric"].iloc[0]) if len(table) else "test_error"
    labels = list(dict.fromkeys(table.sort_values("is_baseline", ascending=False,
                                                  kind="stable")["label"].astype(str)))
    columns, cell_map = [], {}
    for (dataset, model), col in table.groupby(["dataset", "model"], sort=True):
        name = f"{dataset} / {model}"
        for _, r in col.iterrows():
            cell_map[(str(r["label"]), name)] = r
        col_runs = runs[(runs["dataset"] == dataset) & (runs["model"] == model)] \
            if runs is not None else pd.DataFrame()
        columns.append({"name": name, "dataset": dataset, "model": model,
                        "setup": _setup_text(col_runs) if len(col_runs) else "",
                        "power_note": power_note(col, alpha, metric),
                        "noise_text": noise_text(col, metric=metric),
                        "rows": col})
    return {"labels": labels, "columns": columns, "cells": cell_map, "metric": metric,
            "synthetic": bool(table["synthetic"].any()) if len(table) else False,
            "alpha": alpha}


def diff_text(r: pd.Series) -> str:
    if not r["n_pairs"]:
        return "no shared seeds"
    return (f"{fmt_num(r['mean_diff'])} {fmt_ci(r['diff_ci_low'], r['diff_ci_high'])} "
            f"(pairs={int(r['n_pairs'])})")


def _share(r: pd.Series) -> str:
    """'3/3 (100%)': complete runs over all runs of the row."""
    runs = int(r["n_runs"])
    return f"{int(r['n_complete'])}/{runs}" + (f" ({r['n_complete'] / runs:.0%})" if runs else "")


def _pts(x: Any) -> str:
    return fmt_num(x) if np.isfinite(float(x)) else "n/a"


def _detail_rows(col: pd.DataFrame, wilcoxon: bool) -> list[list[str]]:
    rows = []
    for _, r in col.iterrows():
        base = bool(r["is_baseline"])
        head = [md_escape(r["label"]), md_escape(r["outcomes"]), _share(r),
                "baseline" if base else fmt_p(r["p_success_holm"]), str(int(r["n"])),
                f"{fmt_num(r['mean'])} {fmt_ci(r['ci_t_low'], r['ci_t_high'])}"]
        tail = ([fmt_p(r["p_wilcoxon_holm"])] if wilcoxon else []) + [
            fmt_num(r["win_rate"]),
            f"{fmt_num(r['p_superiority'])} {fmt_ci(r['p_sup_ci_low'], r['p_sup_ci_high'])}",
            _pts(r["seed_sd"]), _pts(r["image_component"])]
        rows.append(head + (["baseline"] + ["–"] * (len(tail) + 3) if base else [
            diff_text(r), f"{fmt_num(r['dz'])} {fmt_ci(r['dz_ci_low'], r['dz_ci_high'])}",
            fmt_p(r["p_ttest"]), fmt_p(r["p_ttest_holm"]), *tail]))
    return rows


DETAIL_HEADER = ["label", "runs", "trained", "p (trained share vs baseline, Fisher, Holm)",
                 "n", "mean [95% t CI, within 0-100]", "Δ vs baseline [95% t CI]",
                 "d_z [95% CI]", "p (paired t)", "p (paired t, Holm)",
                 "p (Wilcoxon on counts, Holm)", "paired win rate",
                 "P(X > Y), all complete runs [95% bootstrap CI]", "seed SD of Δ",
                 "image-level SE of Δ (seeds cannot remove)"]


METRIC_NAMES = {"test_error": "error", "test_acc": "accuracy",
                "test_mean_class_acc": "mean class accuracy"}


def detail_header(metric: str, wilcoxon: bool = True) -> list[str]:
    """DETAIL_HEADER with the Wilcoxon column named for what it tests on ``metric``, or left
    out when it cannot reject (``wilcoxon`` False)."""
    basis = "counts" if metric in cells.COUNT_METRICS else "per-seed values"
    return [f"p (Wilcoxon on {basis}, Holm)" if h == "p (Wilcoxon on counts, Holm)" else h
            for h in DETAIL_HEADER if wilcoxon or not h.startswith("p (Wilcoxon")]


def _caption(t: dict) -> str:
    kind = METRIC_NAMES.get(t["metric"], t["metric"])
    return (f"Final-iteration test {kind} (%) per label (rows, baseline first, then the "
            f"suite's order) and cell (columns): mean ± sample standard deviation (ddof=1) over "
            f"the complete runs, n = their number; diverged, stuck and failed runs are counted "
            f"in the cell and left out of the mean. † Holm-adjusted paired t-test (the primary "
            f"test) p < {t['alpha']}, Holm over every comparison in the table; * the same for "
            f"the exact Wilcoxon signed-rank test on {cells.wilcoxon_basis(t['metric'])} "
            f"(robustness; its column is left out where its exact p cannot reach Holm's "
            f"threshold). No marker means the test did not reject, which is expected even for a "
            f"real effect smaller than the minimum detectable difference under each column.")


def _across_text(across: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """(sentence, per-label count rows) of the across-cell analysis."""
    counts = across.get("counts", pd.DataFrame())
    rows = [[md_escape(r["label"]), str(int(r["cells"])), str(int(r["better"])),
             str(int(r["worse"]))] for _, r in counts.iterrows()]
    per_cell = ("The comparisons are the per-cell paired t-tests above, Holm over every "
                "comparison in every cell; no model pools the cells.")
    if across["kind"] == "none":
        return f"Not computed: {across['reason']}.", []
    if across["kind"] == "per-cell":
        return f"No across-cell claim: {across['reason']}. {per_cell}", rows
    return (f"{per_cell} Friedman test on the cell means ({across['n_labels']} labels, "
            f"{across['n_cells']} cells): " + (
                f"chi2 = {across['statistic']:.3f}, p = {fmt_p(across['pvalue'])}."
                if across["reason"] is None else f"not computed: {across['reason']}.")), rows


def write_tables(table: pd.DataFrame, out_dir: str | Path, *, runs: pd.DataFrame | None = None,
                 across: dict[str, Any] | None = None, alpha: float = 0.05, stem: str = "table",
                 title: str | None = None, notes: Sequence[str] = ()) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` (formatted cells), ``<stem>.tex`` and
    ``<stem>_stats.csv`` (the tidy numbers) into ``out_dir``; returns the paths. ``notes``:
    sentences printed under the table (e.g. pooled code versions)."""
    out = Path(out_dir)
    t = build_table(table, runs, alpha)
    names = [c["name"] for c in t["columns"]]
    title = title or ("Test error by regularizer" + (" (SYNTHETIC)" if t["synthetic"] else ""))
    across = across or {"kind": "none", "reason": "not requested"}
    across_sentence, count_rows = _across_text(across)
    md = template_env().get_template("table.md.j2").render(
        title=md_escape(title), synthetic=t["synthetic"], caption=_caption(t),
        header=["label", *[md_escape(n) for n in names]],
        rows=[[md_escape(lab), *[_cell_text(t["cells"].get((lab, c)), "md") for c in names]]
              for lab in t["labels"]],
        columns=[{**c, "name": md_escape(c["name"]), "setup": md_escape(c["setup"]),
                  "detail": _detail_rows(c["rows"], wilcoxon_shown(c["rows"])),
                  "detail_header": detail_header(t["metric"], wilcoxon_shown(c["rows"]))}
                 for c in t["columns"]],
        notes=[md_escape(n) for n in notes],
        pooled_power=pooled_power_text(table, alpha) if len(table) else "",
        across_sentence=across_sentence, count_rows=count_rows,
        boot_min=stats.BOOTSTRAP_MIN_N, boot_coverage=stats.BOOTSTRAP_COVERAGE)
    csv = pd.DataFrame([[lab, *[_cell_text(t["cells"].get((lab, c)), "csv") for c in names]]
                        for lab in t["labels"]], columns=["label", *names])
    caption = tex_escape(_caption(t) + " " + " ".join(
        f"{c['name']}: {c['setup']}. {c['power_note']} {c['noise_text']}" for c in t["columns"])
        + " " + (pooled_power_text(table, alpha) if len(table) else "") + " " + " ".join(notes))
    tex = template_env().get_template("table.tex.j2").render(
        caption=caption, header=[tex_escape(h) for h in ["label", *names]],
        rows=[[tex_escape(lab), *[_cell_text(t["cells"].get((lab, c)), "tex") for c in names]]
              for lab in t["labels"]])
    tidy = table.assign(values=table["values"].map(json.dumps),
                        diverged_at=table["diverged_at"].map(json.dumps))
    return [atomic_write(out / f"{stem}.md", md),
            atomic_write(out / f"{stem}.csv", csv.to_csv(index=False)),
            atomic_write(out / f"{stem}.tex", tex),
            atomic_write(out / f"{stem}_stats.csv", tidy.to_csv(index=False))]


def mixed_code_notes(table: pd.DataFrame) -> list[str]:
    notes = []
    for (dataset, model), col in table.groupby(["dataset", "model"], sort=True):
        codes = sorted({c for v in col["code"].dropna() for c in str(v).split(", ")})
        if len(codes) > 1:
            notes.append(f"{dataset} / {model} pools runs of {len(codes)} code versions "
                         f"({', '.join(codes)}) because --allow-mixed-code was given: pairs may "
                         f"compare different code.")
    return notes


