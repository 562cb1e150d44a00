"""Cells and the comparison table: what may be pooled, what counts, and the tests per row.

A cell is one set-up (docs/statistics.md): dataset, model with its arguments, protocol (content
hash), code version, and the numerics that change results (packed seeds, dtype, thread count
where recorded, CPU or CUDA). :func:`check_setup` refuses a table whose (dataset, model) column
mixes any of them; :func:`compare_to_baseline` then gives one tidy row per (column, label) with every run
counted by outcome and the paired tests of :mod:`benchmark.analysis.stats`, Holm over the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark.analysis import power, stats
from benchmark.config import ConfigError
from benchmark.suites import load_suite

__all__ = ["COUNT_METRICS", "OUTCOMES", "SETUP_FIELDS", "SetupError", "check_setup", "code_versions",
           "compare_to_baseline", "declared_order", "label_order", "select_runs", "with_outcome"]

OUTCOMES = ("complete", "diverged", "stuck", "failed")
# (store column, how a user selects one value, whether failed records are checked). Failed
# records written by the runner carry no runtime block, so runtime fields skip them.
SETUP_FIELDS = (
    ("model_kwargs", "--where model_kwargs='{...}'", True),
    ("protocol_hash", "--protocol NAME_OR_HASH", True),
    ("packed_seeds", "--where packed_seeds=N", False),
    ("dtype", "--where dtype=VALUE", False),
    ("threads", "--where threads=N", False),
    # processes under DDP: without runtime.sync_bn each normalises its own shard, so the
    # world size changes the numbers
    ("world_size", "--where world_size=N", False),
    # CPU and CUDA kernels (convolution algorithms, reduction orders) differ in their rounding,
    # which can flip a run's outcome; different CPUs, or different cards, are not separated
    # (docs/statistics.md, "the machine")
    ("device_type", "--where device_type=cpu|cuda", False),
)
TABLE2_REGULARIZERS = ["weight_decay", "so", "srip", "mhe", "hs_mhe", "rp_comhe", "ap_comhe",
                       "adv_comhe", "g_comhe"]


class SetupError(ConfigError):
    """Runs of different set-ups would be pooled in one cell."""


def with_outcome(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with an ``outcome`` column (a store without one: the recorded status)."""
    if "outcome" in runs:
        return runs.assign(outcome=runs["outcome"].fillna(runs["status"]).astype(str))
    return runs.assign(outcome=runs["status"].astype(str))


def select_runs(runs_df: pd.DataFrame, *, include_synthetic: bool = False,
                include_stuck: bool = False) -> pd.DataFrame:
    """Rows that enter means and tests: outcome complete (and stuck when ``include_stuck``),
    not synthetic unless ``include_synthetic``."""
    runs = with_outcome(runs_df)
    keep = runs["outcome"].isin(["complete", "stuck"] if include_stuck else ["complete"])
    if not include_synthetic and "synthetic" in runs:
        keep &= ~runs["synthetic"].fillna(False).astype(bool)
    return runs.loc[keep]


def code_versions(runs: pd.DataFrame) -> list[str]:
    if "code" in runs:
        return sorted(runs["code"].dropna().astype(str).unique())
    if "git_commit" in runs:
        return sorted(runs["git_commit"].dropna().astype(str).str[:12].unique())
    return []


def _describe(col: pd.DataFrame, field: str) -> str:
    parts = []
    for value, grp in col.groupby(field, sort=True):
        name = ""
        if field == "protocol_hash" and "protocol" in grp:
            name = f"{grp['protocol'].dropna().astype(str).iloc[0]}@" if grp["protocol"].notna().any() else ""
        parts.append(f"{name}{value} ({len(grp)} runs)")
    return ", ".join(parts)


def check_setup(runs: pd.DataFrame, *, allow_mixed_code: bool = False) -> None:
    """Raise :class:`SetupError` (one line naming the field and the filter that selects one
    value) when a (dataset, model) column mixes set-ups; mixed code versions only without
    ``allow_mixed_code``."""
    runs = with_outcome(runs)
    for (dataset, model), col in runs.groupby(["dataset", "model"], sort=True):
        where = f"cell {dataset} / {model}"
        for field, how, failed_too in SETUP_FIELDS:
            if field not in col:
                continue
            rows = col if failed_too else col[col["outcome"] != "failed"]
            rows = rows[rows[field].notna()]
            if rows[field].astype(str).nunique() > 1:
                raise SetupError(f"{where} mixes runs of different {field}: "
                                 f"{_describe(rows, field)}; select one with {how}")
        if "regularizer_source" in col:
            for label, grp in col[col["regularizer_source"].notna()].groupby("label"):
                if grp["regularizer_source"].nunique() > 1:
                    raise SetupError(f"{where} mixes runs of '{label}' from different plugin "
                                     f"sources: {_describe(grp, 'regularizer_source')}; the "
                                     f"older ones are stale: select one with --where "
                                     f"regularizer_source=HASH")
        if "tuned" in col:  # a tuned suite: one chosen setting per method
            for label, grp in col[col["tuned"].notna()].groupby("label"):
                if grp["tuned"].nunique() > 1:
                    raise SetupError(f"{where} mixes runs of '{label}' at different tuned "
                                     f"settings: {_describe(grp, 'tuned')}; keep one final "
                                     f"stage per results directory")
        codes = code_versions(col)
        if len(codes) > 1 and not allow_mixed_code:
            raise SetupError(f"{where} mixes runs of {len(codes)} code versions "
                             f"({', '.join(codes)}); select one with --commit PREFIX, or pass "
                             f"--allow-mixed-code to pair them anyway")


def declared_order(runs: pd.DataFrame) -> list[str]:
    """Display labels in the declared order of the suites named by the runs (suites that
    cannot be loaded are skipped)."""
    order: list[str] = []
    for name in runs["suite"].dropna().astype(str).unique() if "suite" in runs else []:
        try:
            suite = load_suite(name)
        except Exception:  # noqa: BLE001 - an ad-hoc suite name orders nothing
            continue
        order += [r.display_label for r in suite.regularizers]
    return list(dict.fromkeys(order))


def label_order(labels: Sequence[str], baseline: str, declared: Sequence[str] = (),
                regularizer_of: dict[str, str] | None = None) -> list[str]:
    """Baseline first, then the suite's declared order (``declared``: labels), then the
    Table 2 order of regularizer names, then alphabetical."""
    regularizer_of = regularizer_of or {}
    declared = list(declared)

    def key(lab: str) -> tuple:
        reg = regularizer_of.get(lab, lab)
        return (lab != baseline and reg != baseline,
                declared.index(lab) if lab in declared else len(declared),
                TABLE2_REGULARIZERS.index(reg) if reg in TABLE2_REGULARIZERS else 99, lab)

    return sorted(dict.fromkeys(labels), key=key)


def _baseline_label(col: pd.DataFrame, baseline: str, labels: list[str]) -> str:
    """``baseline`` if it is a label of the column, else the label of its regularizer's rows."""
    if baseline in labels or "regularizer" not in col:
        return baseline
    named = col.loc[col["regularizer"].astype(str) == baseline, "label"].astype(str).unique()
    return str(named[0]) if len(named) == 1 else baseline


def _per_seed(group: pd.DataFrame, column: str) -> pd.Series:
    """One value per seed (duplicates, e.g. a re-run, are averaged)."""
    return group.groupby("seed")[column].mean()


# Metrics that are a count of test images over n_test: their Wilcoxon test runs on the integer
# counts and per-image correctness gives their seeds x images components. Others (mean class
# accuracy: a mean of per-class rates) use the per-seed values and have no components.
COUNT_METRICS = ("test_error", "test_acc")


def wilcoxon_basis(metric: str) -> str:
    """What the Wilcoxon column tests for ``metric``, as captions say it."""
    return "error counts" if metric in COUNT_METRICS else "the per-seed values"


def _counts(group: pd.DataFrame, metric: str) -> pd.Series | None:
    """Integer test-set counts behind a percentage metric (errors or correct images)."""
    if metric not in COUNT_METRICS or "n_test" not in group:
        return None
    n = pd.to_numeric(group["n_test"], errors="coerce").astype(float)
    if n.isna().any():
        return None
    counts = (pd.to_numeric(group[metric], errors="coerce").astype(float) * n / 100.0).round()
    return counts.groupby(group["seed"]).mean()


def _outcome_text(row: dict[str, Any]) -> str:
    parts = [f"{row['n_' + o]} {o}" for o in OUTCOMES if row["n_" + o]]
    if row["diverged_at"]:
        parts[[p.endswith("diverged") for p in parts].index(True)] += \
            f" (at iteration {', '.join(str(i) for i in row['diverged_at'])})"
    return ", ".join(parts) or "no runs"


def compare_to_baseline(
    runs_df: pd.DataFrame, baseline: str = "weight_decay", metric: str = "test_error", *,
    include_synthetic: bool = False, include_stuck: bool = False,
    higher_is_better: bool | None = None, alpha: float = 0.05, declared: Sequence[str] = (),
    allow_mixed_code: bool = False,
) -> pd.DataFrame:
    """Summaries and paired tests against ``baseline`` for every (dataset, model, label).

    Args:
        runs_df: the store's ``runs`` table (every outcome: they are counted).
        baseline: a label, or a regularizer name (the row whose ``regularizer`` is
            ``baseline`` when no label is called that, e.g. "weight_decay" shown as "Baseline").
        include_stuck: stuck runs enter means and tests (they are always counted).
        declared: the suite's label order; rows follow it after the baseline.
    Returns:
        tidy DataFrame, one row per (dataset, model, label), in row order: outcome counts
        ``n_complete, n_diverged, n_stuck, n_failed, diverged_at, outcomes``, the
        :func:`stats.cell_summary` fields and per-seed ``values``, the
        :func:`stats.paired_comparison` fields (NaN on the baseline row; P(X > Y) over every
        counted run of the row and of the baseline), the seeds x images components
        ``seed_sd, image_component, churn_sd`` (churn_sd: the flip floor;
        :func:`benchmark.analysis.power.variance_components`; NaN without per-image correctness on >= 2
        shared seeds),
        ``n_runs, share_trained, share_diverged, share_stuck, share_failed``, ``p_success``
        (Fisher exact on trained / not against the baseline) and ``p_success_holm``,
        ``family_size`` (tests in the whole table), ``p_ttest_holm, p_wilcoxon_holm,
        sig_ttest, sig_wilcoxon`` (Holm over the whole table at ``alpha``),
        ``wilcoxon_reachable`` (the exact Wilcoxon on these pairs can go below Holm's first
        threshold alpha / family_size), per column ``sd_diff_pooled, df_pooled`` and ``mdd``
        (minimum detectable paired difference, 80% power, at alpha / family_size, on the
        column's fewest pairs), ``noise_floor`` (the column's binomial SE of one accuracy),
        ``is_baseline, synthetic, n_test, code``.
    Raises:
        SetupError: a column mixes set-ups (:func:`check_setup`).
    """
    if higher_is_better is None:
        higher_is_better = "acc" in metric
    runs = with_outcome(runs_df)
    if not include_synthetic and "synthetic" in runs:
        runs = runs[~runs["synthetic"].fillna(False).astype(bool)]
    check_setup(runs, allow_mixed_code=allow_mixed_code)
    counted_outcomes = ["complete", "stuck"] if include_stuck else ["complete"]
    rows: list[dict[str, Any]] = []
    for (dataset, model), col in runs.groupby(["dataset", "model"], sort=True):
        regs = dict(zip(col["label"].astype(str), col.get("regularizer", col["label"]).astype(str)))
        labels = label_order(col["label"].astype(str).unique(), baseline, declared, regs)
        base_label = _baseline_label(col, baseline, labels)
        labels = label_order(labels, base_label, declared, regs)
        counted = col[col["outcome"].isin(counted_outcomes)]
        base_grp = counted[counted["label"] == base_label]
        base = _per_seed(base_grp, metric)
        base_counts = _counts(base_grp, metric)
        base_bits = stats.decode_correct(base_grp.groupby("seed")["correct"].first()) \
            if "correct" in base_grp else {}
        base_n = {o: int(((col["label"] == base_label) & (col["outcome"] == o)).sum())
                  for o in OUTCOMES}
        n_test = pd.to_numeric(col.get("n_test", pd.Series(dtype=float)), errors="coerce").max()
        acc_src = base_grp if len(base_grp) else counted
        acc = float(acc_src["test_acc"].mean()) if "test_acc" in acc_src and len(acc_src) else np.nan
        noise = stats.binomial_noise_floor(acc, n_test) \
            if np.isfinite(acc) and np.isfinite(n_test) and n_test > 0 else np.nan
        for label in labels:
            every = col[col["label"] == label]
            grp = counted[counted["label"] == label]
            vals = _per_seed(grp, metric)
            row: dict[str, Any] = {"dataset": dataset, "model": model, "label": label,
                                   "metric": metric, "is_baseline": label == base_label}
            for o in OUTCOMES:
                row["n_" + o] = int((every["outcome"] == o).sum())
            div = every[every["outcome"] == "diverged"]
            row["diverged_at"] = sorted(int(i) for i in div.get("final_iteration",
                                                                 pd.Series(dtype=float)).dropna())
            row["outcomes"] = _outcome_text(row)
            rates = stats.success_rates({o: row["n_" + o] for o in OUTCOMES})
            row.update({f"share_{k}": v for k, v in rates.items() if k != "runs"}, n_runs=rates["runs"])
            row["p_success"] = np.nan if label == base_label else stats.success_test(
                row["n_complete"], rates["runs"], base_n["complete"], sum(base_n.values()))
            summary = stats.cell_summary(vals.to_numpy())
            row.update({k: v for k, v in summary.items() if k != "reason"})
            row["values"] = [float(v) for v in vals.to_numpy()]
            reasons = [summary["reason"]]
            if label == base_label or not len(base):
                comp = stats.paired_comparison([], [])
                comp["reason"] = "baseline row" if label == base_label else \
                    f"no counted '{base_label}' runs in this cell"
                row.update(_no_components())
            else:
                shared = vals.index.intersection(base.index)
                cnt = _counts(grp, metric)
                pair_counts = None if cnt is None or base_counts is None else \
                    (cnt.loc[shared].to_numpy(), base_counts.loc[shared].to_numpy())
                comp = stats.paired_comparison(vals.loc[shared].to_numpy(),
                                               base.loc[shared].to_numpy(),
                                               higher_is_better=higher_is_better,
                                               counts=pair_counts,
                                               unpaired=(vals.to_numpy(), base.to_numpy()))
                bits = stats.decode_correct(grp.groupby("seed")["correct"].first()) \
                    if "correct" in grp else {}
                # per-image bits describe overall accuracy only (not a mean of class rates)
                row.update(_components([(bits.get(s), base_bits.get(s)) for s in shared])
                           if metric in COUNT_METRICS else _no_components())
            reasons.append(comp.pop("reason"))
            row.update(comp)
            row.update(
                reason="; ".join(r for r in reasons if r) or None,
                synthetic=bool(every["synthetic"].fillna(False).astype(bool).any())
                if "synthetic" in every else False,
                n_test=float(n_test), noise_floor=noise,
                code=", ".join(code_versions(every)) or "unknown")
            rows.append(row)
    out = pd.DataFrame(rows, columns=_COLUMNS)
    tested = ~out["is_baseline"].astype(bool) & out["p_ttest"].notna()
    family = int(tested.sum())
    out["family_size"] = family
    for p, adj_col, sig_col in (("p_ttest", "p_ttest_holm", "sig_ttest"),
                                ("p_wilcoxon", "p_wilcoxon_holm", "sig_wilcoxon")):
        pv = out[p].where(~out["is_baseline"].astype(bool)).to_numpy(float)
        if p == "p_wilcoxon":  # the same family as the primary test
            pv = np.where(tested, pv, np.nan)
        reject, adjusted = stats.holm(pv, alpha)
        out[adj_col], out[sig_col] = adjusted, reject
    level = alpha / max(family, 1)
    # Success shares: their own Holm family over the same rows.
    out["p_success_holm"] = stats.holm(out["p_success"].to_numpy(float), alpha)[1]
    # What the Wilcoxon column can reach with every difference non-zero: below Holm's first
    # threshold or never.
    out["wilcoxon_reachable"] = [stats.min_p_wilcoxon(int(k)) <= level
                                 for k in out["n_pairs"].fillna(0)]
    for _, idx in out.groupby(["dataset", "model"]).groups.items():
        col = out.loc[idx]
        tested_rows = col[~col["is_baseline"].astype(bool)]
        sd, df = power.pooled_sd(tested_rows["sd_diff"], tested_rows["n_pairs"].fillna(0))
        n_min = _fewest_pairs(tested_rows)
        out.loc[idx, "sd_diff_pooled"], out.loc[idx, "df_pooled"] = sd, df
        out.loc[idx, "mdd"] = power.min_detectable_difference(sd, n_min, level)
    return out


def _fewest_pairs(rows: pd.DataFrame) -> int:
    """The fewest pairs among rows that can be tested (>= 2 pairs): the MDD is stated for the
    weakest tested comparison; 0 when no row can be tested."""
    pairs = rows["n_pairs"].fillna(0)
    pairs = pairs[pairs >= 2]
    return int(pairs.min()) if len(pairs) else 0


def _no_components() -> dict[str, float]:
    return {"seed_sd": np.nan, "image_component": np.nan, "churn_sd": np.nan}


def _components(pairs: list) -> dict[str, float]:
    """Seeds x images variance components of one row's shared seeds (churn_sd: the flip
    floor), from per-image correctness (NaN where a seed lacks it)."""
    if not pairs or any(a is None or b is None or a.shape != b.shape for a, b in pairs):
        return _no_components()
    diff = np.stack([a.astype(np.int8) - b.astype(np.int8) for a, b in pairs])
    comp = power.variance_components(diff)
    return {"seed_sd": comp["seed_sd"], "image_component": comp["image_component"],
            "churn_sd": comp["churn_sd"]}


_COLUMNS = [
    "dataset", "model", "label", "metric", "is_baseline", "n_complete", "n_diverged", "n_stuck",
    "n_failed", "diverged_at", "outcomes", "n", "mean", "std", "median", "ci_t_low",
    "ci_t_high", "ci_boot_low", "ci_boot_high", "values", "n_pairs", "mean_diff", "sd_diff",
    "diff_ci_low", "diff_ci_high", "diff_boot_low", "diff_boot_high", "t_stat", "p_ttest", "dz",
    "dz_ci_low", "dz_ci_high", "w_stat", "p_wilcoxon", "n_nonzero", "min_p_wilcoxon",
    "win_rate", "p_superiority", "p_sup_ci_low", "p_sup_ci_high", "seed_sd", "image_component",
    "churn_sd", "n_runs", "share_trained", "share_diverged", "share_stuck",
    "share_failed", "p_success", "reason", "synthetic", "n_test", "noise_floor", "code",
]
