"""The leaderboard: one Markdown page of several results directories, one section per cell.

Each group of runs is compared on its own (:func:`benchmark.analysis.cells.compare_to_baseline`: its own
cells and Holm family) and rendered through ``templates/leaderboard.md.j2`` with the same
formatting, power note and noise line as the report's table (:mod:`benchmark.analysis.tables`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.analysis import cells
from benchmark.records import atomic_write
from benchmark.analysis.tables import (
    column_values,
    diff_text,
    fmt_ci,
    fmt_num,
    fmt_p,
    md_escape,
    mixed_code_notes,
    noise_text,
    power_note,
    template_env,
    wilcoxon_shown,
)

__all__ = ["interim_notes", "render_leaderboard", "render_leaderboards", "tuning_context", "verdict"]


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
    one = functools.partial(column_values, runs)

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
    if machines := _machines_text(runs):
        parts.append(machines)
    return ", ".join(p for p in parts if p)


def _machines_text(runs: pd.DataFrame) -> str | None:
    """Which processors trained the section's runs, with counts when there are several: seeds
    of one table may come from different machines, whose kernels round differently (a
    rerun's verdict, `compare`, measures what that moves)."""
    if "machine" not in runs or runs["machine"].isna().all():
        return None
    counts = runs["machine"].fillna("unrecorded").value_counts()
    if len(counts) == 1:
        return f"trained on {counts.index[0]}"
    return "trained on " + " and ".join(f"{m} ({n} run{'s' if n != 1 else ''})"
                                  for m, n in sorted(counts.items()))


def tuning_context(choice: dict | None, plots: dict[tuple[str, str], str] | None = None,
                   planned_seeds: int | None = None, about: str | None = None) -> dict | None:
    """What a section of a tuned suite shows beside its table, from the tuning stage's choice
    file (benchmark/analysis/choice.py): per (dataset, model, label) the chosen value, and the
    budget every method had. ``plots``: (dataset, model) -> the validation-curve figure's link.
    ``planned_seeds``: the final stage's seeds per method (the suite file's ``seeds``; None:
    unknown), so that a section with fewer runs than planned is shown as interim. ``about``:
    the suite file's description, shown above the table (where a suite says what its length is
    and is not, e.g. a fixed budget rather than a plateau)."""
    if not choice:
        return None
    chosen = {(c["dataset"], c["model"], c["label"]): (c["param"], c.get("chosen"), len(c["grid"]))
              for c in choice.get("choices") or []}
    sizes = sorted({n for _, _, n in chosen.values()})
    return {"chosen": chosen, "plots": plots or {}, "planned_seeds": planned_seeds,
            "about": about, "budget": (
        f"every method tuned with the same budget: {'/'.join(map(str, sizes))} grid values x "
        f"{len(choice.get('seeds') or [])} tuning seeds ({', '.join(map(str, choice.get('seeds') or []))}) "
        f"on a {choice.get('validation_images')}-image validation split held out of the training "
        f"set; chosen by {choice.get('rule')}; the test set was not used to choose")}


def _chosen_text(tuning: dict, dataset: str, model: str, label: str) -> str:
    param, value, _ = tuning["chosen"].get((dataset, model, label), (None, None, 0))
    if param is None:
        return "not tuned"
    return "none (every value broke a run)" if value is None else f"{param} = {value:g}"


def _interim_text(tuning: dict, dataset: str, model: str, n_runs: int) -> str | None:
    """None when the final stage of this cell has every planned run (or the plan is unknown);
    else what is missing. An incomplete table is shown, but nothing is declared to beat the
    baseline: a verdict read before the planned seeds are in is a peek (optional stopping
    inflates the false-positive rate), so the column says "interim" until it completes."""
    seeds = tuning.get("planned_seeds")
    methods = sum(1 for (d, m, _) in tuning["chosen"] if (d, m) == (dataset, model))
    planned = (seeds or 0) * methods
    if not planned or n_runs >= planned:
        return None
    return (f"the final stage is incomplete: {n_runs} of {planned} planned runs ({methods} "
            f"methods x {seeds} seeds). Every number shown is of the runs so far, not the "
            f"suite's result; a test read before every planned run is in is a peek, not a verdict")


def interim_notes(tuning: dict | None, runs: pd.DataFrame) -> list[str]:
    """The report's notes for the cells of a tuned suite whose final stage is incomplete."""
    if not tuning or runs.empty:
        return []
    return [f"Interim ({d} / {m}): {text}." for (d, m), c in runs.groupby(["dataset", "model"])
            if (text := _interim_text(tuning, d, m, len(c)))]


def _share(r: pd.Series) -> str:
    return f"{int(r['n_complete'])}/{int(r['n_runs'])}"


def verdict(row: pd.Series | dict, alpha: float, *, interim: bool = False) -> str:
    """A tuned section's "beats baseline" cell: "yes" / "no" by the Holm-adjusted paired t-test
    on the error (lower is better), "no: worse" when the method is significantly worse (a
    reader comparing regularizers wants that as much as a win), "interim" before every planned
    run is in."""
    if bool(row["is_baseline"]):
        return "baseline"
    if interim:
        return "interim"
    p, diff = row["p_ttest_holm"], row.get("mean_diff")
    if pd.isna(p) or p >= alpha or pd.isna(diff) or diff == 0:
        return "no"
    return "yes" if diff < 0 else "no: worse"


def _leaderboard_sections(table: pd.DataFrame, runs: pd.DataFrame, alpha: float,
                          source: str, metric: str, tuning: dict | None = None
                          ) -> list[dict[str, Any]]:
    """One section per (dataset, model). A tuned suite's sections (``tuning``: from
    :func:`tuning_context`) rank the methods by mean final error (1 = lowest; rows in rank
    order), say whether each beats the baseline after Holm, and show its chosen value."""
    sections = []
    for (dataset, model), col in table.groupby(["dataset", "model"], sort=True):
        wilcoxon = wilcoxon_shown(col)
        col_runs = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        interim = _interim_text(tuning, dataset, model, len(col_runs)) if tuning else None
        if tuning:
            col = col.assign(rank=col["mean"].rank(method="min")).sort_values(
                ["rank", "label"], na_position="last")
        header = [*(["rank"] if tuning else []), "label",
                  *(["chosen (validation)"] if tuning else []), "runs", "trained",
                  "p (trained share vs baseline, Fisher, Holm)",
                  f"mean {metric} [95% t CI]", "Δ vs baseline [95% t CI]",
                  "p (paired t, Holm)", *(["p (Wilcoxon, Holm)"] if wilcoxon else []),
                  *([f"beats baseline (Holm, {alpha:g})"] if tuning else []),
                  "code", "synthetic"]
        rows = []
        for _, r in col.iterrows():
            base = bool(r["is_baseline"])
            tuned = ([str(int(r["rank"])) if pd.notna(r["rank"]) else "-"] if tuning else [])
            rows.append([*tuned, md_escape(r["label"]),
                         *([md_escape(_chosen_text(tuning, dataset, model, r["label"]))]
                           if tuning else []),
                         md_escape(r["outcomes"]), _share(r),
                         "baseline" if base else fmt_p(r["p_success_holm"]),
                         f"{fmt_num(r['mean'])} {fmt_ci(r['ci_t_low'], r['ci_t_high'])}"
                         if r["n"] > 1 else f"{fmt_num(r['mean'])} (n={int(r['n'])})"
                         if r["n"] else "no counted runs",
                         "baseline" if base else diff_text(r), fmt_p(r["p_ttest_holm"]),
                         *([fmt_p(r["p_wilcoxon_holm"])] if wilcoxon else []),
                         *([verdict(r, alpha, interim=bool(interim))] if tuning else []),
                         md_escape(r["code"]), "yes" if r["synthetic"] else "no"])
        sections.append({"dataset": md_escape(dataset),
                         "model": md_escape(f"{model}{_kwargs_text(col_runs)}"),
                         "setup": md_escape(_section_setup(col_runs)),
                         "source": md_escape(source), "n_runs": int(len(col_runs)),
                         "header": header, "rows": rows,
                         "synthetic": bool(col["synthetic"].any()),
                         "power_note": power_note(col, alpha, metric),
                         "noise_text": noise_text(col, metric),
                         "tuning": md_escape(tuning["budget"]) if tuning else None,
                         "about": md_escape(tuning["about"]) if tuning and tuning.get("about") else None,
                         "interim": md_escape(f"{interim}, so no method is declared to beat "
                                              f"the baseline yet") if interim else None,
                         "plot": (tuning or {}).get("plots", {}).get((dataset, model))})
    return sections


def render_leaderboards(groups: Sequence[tuple[str, pd.DataFrame]],
                        out_path: str | Path = "results/leaderboard.md", *,
                        baseline: str = "weight_decay", metric: str = "test_error",
                        include_synthetic: bool = True, include_stuck: bool = False,
                        alpha: float = 0.05, declared: Sequence[str] | None = None,
                        allow_mixed_code: bool = False,
                        tunings: Sequence[dict | None] | None = None,
                        history: Sequence[tuple[str, pd.DataFrame, str | None]] = ()) -> Path:
    """Render one leaderboard from several groups of runs, e.g. one per results directory
    (``[("results/fashion/runs", runs_a), ("results/quick/runs", runs_b)]``): each group is
    compared on its own (its own cells, Holm family and row order: the order of its suites),
    and each of its (dataset, model) cells becomes a section whose heading states the set-up
    (dataset, model and kwargs, suite, protocol and its hash, seeds, code versions). Groups
    keep the given order. ``declared`` (None: each group's suites' order) orders the rows
    after the baseline in every group. ``tunings``: per group, the :func:`tuning_context` of a
    tuned suite (None: not tuned). ``history``: superseded tables, as (source, runs, link to
    their committed report table or None), listed at the end by set-up and link only: they are
    kept for the record, not shown as current results. Every group is computed before anything
    is written: a set-up mix in any of them raises ``SetupError`` naming that group, and no file
    is written."""
    sections, notes, n_runs = [], [], 0
    tunings = list(tunings) if tunings is not None else [None] * len(groups)
    for (source, runs_df), tuning in zip(groups, tunings, strict=True):
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
        sections += _leaderboard_sections(table, runs_df, alpha, source, metric, tuning)
        n_runs += int(len(runs_df))
    past = [{"source": md_escape(src), "n_runs": int(len(df)), "link": link,
             "setups": [md_escape(f"{d} / {m}{_kwargs_text(c)}: {_section_setup(c)}")
                        for (d, m), c in df.groupby(["dataset", "model"], sort=True)]}
            for src, df, link in history]
    sources = [md_escape(src) for src, _ in groups if src]
    md = template_env().get_template("leaderboard.md.j2").render(
        sections=sections, metric=metric, baseline=md_escape(baseline),
        n_runs=n_runs, sources=sources, any_synthetic=any(s["synthetic"] for s in sections),
        notes=[md_escape(n) for n in notes], history=past)
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
