"""Markdown / CSV / LaTeX rendering of the comparison table and the leaderboard.

Renders the tidy table of :func:`benchmark.cells.compare_to_baseline` and the across-cell
analysis of :mod:`benchmark.stats_across` through the jinja2 templates in
``benchmark/templates``; computes no statistic. Every label is escaped for the format it is
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

from benchmark import cells, stats
from benchmark.records import atomic_write

__all__ = ["build_table", "format_cell", "md_escape", "noise_text", "power_note",
           "render_leaderboard", "render_leaderboards", "suggested_seeds", "tex_escape", "write_tables"]

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


def _p(p: Any) -> str:
    ok = p is not None and np.isfinite(float(p))
    return "–" if not ok else "<0.001" if p < 0.001 else f"{p:.3g}"


def _ci(lo: Any, hi: Any, nd: int = 2) -> str:
    return f"[{fmt_num(lo, nd)}, {fmt_num(hi, nd)}]" if np.isfinite(float(lo)) else "(no interval)"


def format_cell(mean: float, std: float, n: int, decimals: int = 2, pm: str = "±") -> str:
    """``"24.41 ± 0.21 (n=5)"``; ``"24.41 (n=1)"`` without a spread; ``"–"`` with no runs."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    if n < 2 or not np.isfinite(std):
        return f"{mean:.{decimals}f} (n={n})"
    return f"{mean:.{decimals}f} {pm} {std:.{decimals}f} (n={n})"


# --- notes derived from the tests ---------------------------------------------------------------

def power_note(col: pd.DataFrame, alpha: float = 0.05, metric: str = "test_error") -> str:
    """What the column's tests can show: the primary paired t-test (level alpha/m under Holm
    over the table's m tests, seeds needed for 0.3 points) and the Wilcoxon column's floor."""
    others = col[~col["is_baseline"].astype(bool)]
    pairs = others["n_pairs"].fillna(0).astype(int)
    if not len(others) or pairs.max() < 1:
        return "No paired comparison with the baseline (no shared seeds)."
    m = int(col["family_size"].max()) if len(col) else 0
    n = int(pairs.min())
    level = alpha / max(m, 1)
    head = (f"Primary test: paired t on {n}{'+' if pairs.max() > n else ''} seeds, Holm over "
            f"the table's {m} test(s) (first threshold {alpha}/{max(m, 1)} = {level:.2g}).")
    need = others["seeds_needed"].dropna()
    if n < 2:
        power = " With fewer than 2 pairs no test is possible."
    elif len(need):
        power = (f" With the observed spread of the differences, detecting {stats.DETECT_POINTS} "
                 f"points with {stats.POWER:.0%} power at that level needs "
                 f"{int(need.median())} seeds (median over rows; range {int(need.min())}-"
                 f"{int(need.max())}); a comparison that is not significant is weak evidence, not "
                 f"proof of no effect.")
    else:
        power = " The differences have no spread: the t-test is undefined."
    floor = stats.min_p_wilcoxon(n)
    wil = (f" Wilcoxon (robustness column, exact, on {cells.wilcoxon_basis(metric)}): on {n} pairs it cannot "
           f"go below p = 2/2^{n} = {floor:.3g} (higher when differences are zero)"
           + (", so its marker cannot appear." if floor > level else "."))
    return head + power + wil


def noise_text(col: pd.DataFrame, paired_se: str = "the paired (McNemar) SE column",
               metric: str = "test_error") -> str:
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
            f"two models on the same images: see {paired_se}.")


def suggested_seeds(table: pd.DataFrame) -> int | None:
    """The largest per-column median of ``seeds_needed`` (None when unknown)."""
    needs = [g["seeds_needed"].dropna().median() for _, g in table.groupby(["dataset", "model"])]
    needs = [n for n in needs if np.isfinite(n)]
    return int(max(needs)) if needs else None


# --- the comparison table -----------------------------------------------------------------------

def _column_values(runs: pd.DataFrame, col: str) -> str | None:
    """The distinct values of one column of ``runs``, sorted and joined; None if absent/empty."""
    if col not in runs:
        return None
    vals = sorted(runs[col].dropna().astype(str).unique())
    return ", ".join(vals) if vals else None


def _setup_text(runs: pd.DataFrame) -> str:
    """The set-up of one column's runs (checked uniform by cells.check_setup)."""
    one = functools.partial(_column_values, runs)

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


def _diff_text(r: pd.Series) -> str:
    if not r["n_pairs"]:
        return "no shared seeds"
    return (f"{fmt_num(r['mean_diff'])} {_ci(r['diff_ci_low'], r['diff_ci_high'])} "
            f"(pairs={int(r['n_pairs'])})")


def _detail_rows(col: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, r in col.iterrows():
        base = bool(r["is_baseline"])
        rows.append([md_escape(r["label"]), md_escape(r["outcomes"]), str(int(r["n"])),
                     f"{fmt_num(r['mean'])} {_ci(r['ci_t_low'], r['ci_t_high'])}"] + (
            ["baseline"] + ["–"] * 8 if base else [
                _diff_text(r),
                f"{fmt_num(r['dz'])} {_ci(r['dz_ci_low'], r['dz_ci_high'])}",
                _p(r["p_ttest"]), _p(r["p_ttest_holm"]), _p(r["p_wilcoxon_holm"]),
                fmt_num(r["win_rate"]),
                f"{fmt_num(r['p_superiority'])} {_ci(r['p_sup_ci_low'], r['p_sup_ci_high'])}",
                fmt_num(r["mcnemar_se"]) if np.isfinite(r["mcnemar_se"]) else "n/a",
                fmt_num(r["seeds_needed"], 0)]))
    return rows


DETAIL_HEADER = ["label", "runs", "n", "mean [95% t CI, within 0-100]",
                 "Δ vs baseline [95% t CI]", "d_z [95% CI]", "p (paired t)",
                 "p (paired t, Holm)", "p (Wilcoxon on counts, Holm)", "paired win rate",
                 "P(X > Y) [95% bootstrap CI]", "test-set SE of Δ (McNemar)", "seeds for 0.3"]


METRIC_NAMES = {"test_error": "error", "test_acc": "accuracy",
                "test_mean_class_acc": "mean class accuracy"}


def detail_header(metric: str) -> list[str]:
    """DETAIL_HEADER with the Wilcoxon column named for what it tests on ``metric``."""
    basis = "counts" if metric in cells.COUNT_METRICS else "per-seed values"
    return [f"p (Wilcoxon on {basis}, Holm)" if h == "p (Wilcoxon on counts, Holm)" else h
            for h in DETAIL_HEADER]


def _caption(t: dict) -> str:
    kind = METRIC_NAMES.get(t["metric"], t["metric"])
    return (f"Final-iteration test {kind} (%) per label (rows, baseline first, then the "
            f"suite's order) and cell (columns): mean ± sample standard deviation (ddof=1) over "
            f"the complete runs, n = their number; diverged, stuck and failed runs are counted "
            f"in the cell and left out of the mean. † Holm-adjusted paired t-test (the primary "
            f"test) p < {t['alpha']}, Holm over every comparison in the table; * the same for "
            f"the exact Wilcoxon signed-rank test on {cells.wilcoxon_basis(t['metric'])} "
            f"(robustness). No marker means "
            f"the test did not reject, which at small n is expected even for a real effect.")


def _across_text(across: dict[str, Any]) -> tuple[str, list[list[str]], list[list[str]]]:
    """(sentence, contrast rows, pooled-difference rows) of the across-cell analysis."""
    pooled = [[md_escape(r["label"]), str(int(r["pairs"])), fmt_num(r["mean_diff"]),
               fmt_num(r["win_rate"])] for _, r in across["pooled"].iterrows()]
    if across["kind"] == "none":
        return f"Not computed: {across['reason']}.", [], pooled
    if across["kind"] == "friedman":
        text = (f"Friedman test on the cell means ({across['n_labels']} labels, "
                f"{across['n_cells']} cells): " + (
                    f"chi2 = {across['statistic']:.3f}, p = {_p(across['pvalue'])}."
                    if across["reason"] is None else f"not computed: {across['reason']}."))
        return text, [], pooled
    if across["reason"]:
        return f"Mixed model not computed: {across['reason']}.", [], pooled
    text = (f"Fewer cells ({across['n_cells']}) than labels ({across['n_labels']}): Friedman "
            f"cannot reach small p here, so a linear mixed model metric ~ method + cell + "
            f"(1 | cell:seed) (statsmodels MixedLM, REML) is fitted; each method's coefficient "
            f"is its difference from the baseline, Wald z, Holm over the methods."
            + ("" if across["converged"] else " The fit did NOT converge: read with care."))
    rows = [[md_escape(r["label"]), fmt_num(r["estimate"]), fmt_num(r["se"]), _p(r["p"]),
             _p(r["p_holm"]), "yes" if r["significant"] else "no"]
            for _, r in across["contrasts"].iterrows()]
    return text, rows, pooled


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
    across = across or {"kind": "none", "reason": "not requested", "pooled": pd.DataFrame(
        columns=["label", "pairs", "mean_diff", "win_rate"])}
    across_sentence, contrast_rows, pooled_rows = _across_text(across)
    seeds = suggested_seeds(table)
    md = template_env().get_template("table.md.j2").render(
        title=md_escape(title), synthetic=t["synthetic"], caption=_caption(t),
        header=["label", *[md_escape(n) for n in names]],
        rows=[[md_escape(lab), *[_cell_text(t["cells"].get((lab, c)), "md") for c in names]]
              for lab in t["labels"]],
        columns=[{**c, "name": md_escape(c["name"]), "setup": md_escape(c["setup"]),
                  "detail": _detail_rows(c["rows"])} for c in t["columns"]],
        detail_header=detail_header(t["metric"]), notes=[md_escape(n) for n in notes],
        seeds=seeds, detect=stats.DETECT_POINTS, across_sentence=across_sentence,
        contrast_rows=contrast_rows, pooled_rows=pooled_rows,
        boot_min=stats.BOOTSTRAP_MIN_N)
    csv = pd.DataFrame([[lab, *[_cell_text(t["cells"].get((lab, c)), "csv") for c in names]]
                        for lab in t["labels"]], columns=["label", *names])
    caption = tex_escape(_caption(t) + " " + " ".join(
        f"{c['name']}: {c['setup']}. {c['power_note']} {c['noise_text']}" for c in t["columns"])
        + " " + " ".join(notes))
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


# --- leaderboard ------------------------------------------------------------------------------

def _seeds_text(seeds: Sequence[int]) -> str:
    """Sorted seeds, runs of consecutive ones as ranges: [0, 1, 2, 7] -> '0-2, 7 (n=4)'."""
    seeds = sorted({int(s) for s in seeds})
    if not seeds:
        return "none"
    parts, start = [], seeds[0]
    for prev, cur in zip(seeds, seeds[1:] + [None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return f"{', '.join(parts)} (n={len(seeds)})"


def _kwargs_text(runs: pd.DataFrame) -> str:
    """The model's constructor arguments as ``(width=0.25)``; '' when there are none."""
    vals = sorted(runs["model_kwargs"].dropna().astype(str).unique()) if "model_kwargs" in runs \
        else []
    texts = []
    for v in vals:
        try:
            kw = json.loads(v)
        except ValueError:
            kw = None
        if isinstance(kw, dict):
            if kw:
                texts.append(", ".join(f"{k}={kw[k]}" for k in sorted(kw)))
        else:
            texts.append(v)
    return f" ({'; '.join(texts)})" if texts else ""


def _section_setup(runs: pd.DataFrame) -> str:
    """Suite, protocol (content hash), seeds and code versions of one section's runs."""
    one = functools.partial(_column_values, runs)

    parts = []
    if (suite := one("suite")) is not None:
        parts.append(f"suite {suite}")
    if (proto := one("protocol")) is not None:
        parts.append(f"protocol {proto}" + (f" ({one('protocol_hash')})"
                                            if one("protocol_hash") else ""))
    parts.append(f"seeds {_seeds_text(runs['seed'].dropna())}" if "seed" in runs else "")
    code = one("code") or (", ".join(cells.code_versions(runs)) if len(runs) else None)
    if code:
        parts.append(f"code {code}")
    return ", ".join(p for p in parts if p)


def _leaderboard_sections(table: pd.DataFrame, runs: pd.DataFrame, alpha: float,
                          source: str) -> list[dict[str, Any]]:
    sections = []
    for (dataset, model), col in table.groupby(["dataset", "model"], sort=True):
        rows = []
        for _, r in col.iterrows():
            diff = "baseline" if r["is_baseline"] else _diff_text(r)
            rows.append([md_escape(r["label"]), md_escape(r["outcomes"]),
                         f"{fmt_num(r['mean'])} {_ci(r['ci_t_low'], r['ci_t_high'])}"
                         if r["n"] > 1 else f"{fmt_num(r['mean'])} (n={int(r['n'])})"
                         if r["n"] else "no counted runs",
                         diff, _p(r["p_ttest_holm"]), _p(r["p_wilcoxon_holm"]),
                         md_escape(r["code"]), "yes" if r["synthetic"] else "no"])
        col_runs = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        sections.append({"dataset": md_escape(dataset),
                         "model": md_escape(f"{model}{_kwargs_text(col_runs)}"),
                         "setup": md_escape(_section_setup(col_runs)),
                         "source": md_escape(source), "n_runs": int(len(col_runs)),
                         "rows": rows, "synthetic": bool(col["synthetic"].any()),
                         "power_note": power_note(col, alpha),
                         "noise_text": noise_text(col, "the McNemar SE in the report's table")})
    return sections


def render_leaderboards(groups: Sequence[tuple[str, pd.DataFrame]],
                        out_path: str | Path = "results/leaderboard.md", *,
                        baseline: str = "weight_decay", metric: str = "test_error",
                        include_synthetic: bool = True, include_stuck: bool = False,
                        alpha: float = 0.05, declared: Sequence[str] | None = None,
                        allow_mixed_code: bool = False) -> Path:
    """Render one leaderboard from several groups of runs, e.g. one per results directory
    (``[("results/fashion/runs", runs_a), ("results/quick/runs", runs_b)]``): each group is
    compared on its own (its own cells, Holm family and row order: the order of its suites),
    and each of its (dataset, model) cells becomes a section whose heading states the set-up
    (dataset, model and kwargs, suite, protocol and its hash, seeds, code versions). Groups
    keep the given order. ``declared`` (None: each group's suites' order) orders the rows
    after the baseline in every group. Every group is computed before anything is written: a set-up mix
    in any of them raises ``SetupError`` naming that group, and no file is written."""
    sections, notes, n_runs = [], [], 0
    for source, runs_df in groups:
        try:
            table = cells.compare_to_baseline(
                runs_df, baseline=baseline, metric=metric, include_synthetic=include_synthetic,
                include_stuck=include_stuck, alpha=alpha,
                declared=cells.declared_order(runs_df) if declared is None else declared,
                allow_mixed_code=allow_mixed_code)
        except cells.SetupError as exc:
            raise cells.SetupError(f"{source}: {exc}" if source else str(exc)) from None
        if allow_mixed_code:
            notes += mixed_code_notes(table)
        sections += _leaderboard_sections(table, runs_df, alpha, source)
        n_runs += int(len(runs_df))
    header = ["label", "runs", f"mean {metric} [95% t CI]", "Δ vs baseline [95% t CI]",
              "p (paired t, Holm)", "p (Wilcoxon, Holm)", "code", "synthetic"]
    sources = [md_escape(src) for src, _ in groups if src]
    md = template_env().get_template("leaderboard.md.j2").render(
        sections=sections, header=header, metric=metric, baseline=md_escape(baseline),
        n_runs=n_runs, sources=sources, any_synthetic=any(s["synthetic"] for s in sections),
        notes=[md_escape(n) for n in notes])
    return atomic_write(Path(out_path), md)


def render_leaderboard(runs_df: pd.DataFrame, out_path: str | Path = "results/leaderboard.md",
                       *, baseline: str = "weight_decay", metric: str = "test_error",
                       include_synthetic: bool = True, include_stuck: bool = False,
                       alpha: float = 0.05, declared: Sequence[str] | None = None,
                       allow_mixed_code: bool = False) -> Path:
    """Render the leaderboard Markdown from one ``runs`` table (template
    ``leaderboard.md.j2``): one section per (dataset, model), rows in suite order, baseline
    first, every run counted by outcome. Refuses (SetupError) before writing on a set-up mix.
    ``declared``: the row order after the baseline (None: the order of the runs' suites).
    Several results directories in one file: :func:`render_leaderboards`."""
    return render_leaderboards([("", runs_df)], out_path, baseline=baseline, metric=metric,
                               include_synthetic=include_synthetic, include_stuck=include_stuck,
                               alpha=alpha, declared=declared, allow_mixed_code=allow_mixed_code)


def mixed_code_notes(table: pd.DataFrame) -> list[str]:
    notes = []
    for (dataset, model), col in table.groupby(["dataset", "model"], sort=True):
        codes = sorted({c for v in col["code"].dropna() for c in str(v).split(", ")})
        if len(codes) > 1:
            notes.append(f"{dataset} / {model} pools runs of {len(codes)} code versions "
                         f"({', '.join(codes)}) because --allow-mixed-code was given: pairs may "
                         f"compare different code.")
    return notes


