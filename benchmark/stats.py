"""Statistics for CoMHE-Bench: per-cell summaries, paired tests against a baseline, ranks.

Pure functions on arrays and DataFrames (rliable style). The unit of replication is a training
run with its own seed; pairs are matched on ``seed``. Every test is delegated to scipy.stats or
statsmodels; this module only arranges inputs and names outputs. See docs/statistics.md.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats import multitest as _multitest

__all__ = [
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "average_ranks",
    "binomial_noise_floor",
    "cell_summary",
    "compare_to_baseline",
    "friedman",
    "holm",
    "min_p_wilcoxon",
    "paired_comparison",
    "select_runs",
]

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
_NAN = float("nan")
# scipy >= 1.15 takes ``rng``; older releases (the floor is 1.11) take ``random_state``.
_BOOT_RNG_KW = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"


def _as_1d(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    return arr[~np.isnan(arr)]


def _t_interval(mean: float, sd: float, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided t confidence interval of a mean; (nan, nan) when n < 2."""
    if n < 2:
        return _NAN, _NAN
    if sd == 0.0:
        return mean, mean
    return tuple(float(v) for v in sps.t.interval(confidence, df=n - 1, loc=mean,
                                                 scale=sd / math.sqrt(n)))


def cell_summary(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Summary of one cell's final metric over seeds.

    Args:
        values: shape (n,), one final metric per seed. NaNs are dropped.
    Returns:
        dict with ``n, mean, std`` (ddof=1), ``median``, ``ci_t_low, ci_t_high`` (t interval of
        the mean, scipy.stats.t), ``ci_boot_low, ci_boot_high`` (percentile bootstrap of the mean,
        scipy.stats.bootstrap, seeded) and ``reason`` (why a field is NaN, else None).
    """
    x = _as_1d(values)
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "mean": _NAN, "std": _NAN, "median": _NAN, "ci_t_low": _NAN,
                           "ci_t_high": _NAN, "ci_boot_low": _NAN, "ci_boot_high": _NAN,
                           "reason": None}
    if n == 0:
        out["reason"] = "no runs"
        return out
    out["mean"] = float(np.mean(x))
    out["median"] = float(np.median(x))
    if n < 2:
        out["reason"] = "n=1: no spread or interval from a single run"
        return out
    sd = float(np.std(x, ddof=1))
    out["std"] = sd
    out["ci_t_low"], out["ci_t_high"] = _t_interval(out["mean"], sd, n, confidence)
    if sd == 0.0:  # all resamples identical: the bootstrap interval is the point itself
        out["ci_boot_low"] = out["ci_boot_high"] = out["mean"]
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small/degenerate samples
        res = sps.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                            method="percentile", **{_BOOT_RNG_KW: np.random.default_rng(seed)})
    out["ci_boot_low"] = float(res.confidence_interval.low)
    out["ci_boot_high"] = float(res.confidence_interval.high)
    return out


def min_p_wilcoxon(n: int) -> float:
    """Smallest two-sided p-value an exact Wilcoxon signed-rank test can give on n pairs.

    All n differences with the same sign: p = 2 / 2**n (0.25 at n=3, 0.0020 at n=10); 1.0 at n<=1.
    """
    if n <= 1:
        return 1.0
    return min(1.0, 2.0 / 2.0**n)


def _wilcoxon_method(d: np.ndarray) -> str:
    """The method scipy's ``method='auto'`` resolves to for differences ``d`` (zeros dropped)."""
    nz = d[d != 0]
    ties = np.unique(np.abs(nz)).size < nz.size
    if nz.size < d.size or ties:
        return "exact permutation (ties/zeros)" if nz.size <= 13 else "asymptotic"
    return "exact" if d.size <= 50 else "asymptotic"


def paired_comparison(
    x: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = False,
    alpha: float = 0.05,
    family_size: int = 1,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Compare a method with the baseline on runs paired by seed.

    Args:
        x, baseline: shape (n,), aligned so that ``x[i]`` and ``baseline[i]`` share a seed.
        higher_is_better: False for errors (x beats baseline when x < baseline).
        alpha, family_size: for ``can_reach_significance``: whether the exact Wilcoxon test on
            n pairs can reach the first Holm threshold ``alpha / family_size`` at all.
    Returns:
        dict with ``n_pairs, mean_diff`` (mean of x - baseline), ``diff_ci_low, diff_ci_high``
        (t interval), ``t_stat, p_ttest`` (scipy.stats.ttest_rel), ``w_stat, p_wilcoxon,
        wilcoxon_method`` (scipy.stats.wilcoxon, zero_method="wilcox": zero differences are
        discarded; method="auto": exact without ties/zeros), ``effect_size_dz`` (mean diff / sd
        of diffs), ``prob_improvement`` (fraction of pairs where x beats baseline, ties 1/2),
        ``min_p_wilcoxon, can_reach_significance`` and ``reason``.
    """
    a = np.asarray(x, dtype=float).reshape(-1)
    b = np.asarray(baseline, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired_comparison: x has {a.size} values but baseline has {b.size}; "
                         "pass arrays aligned by seed")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = a - b
    n = int(d.size)
    out: dict[str, Any] = {
        "n_pairs": n, "mean_diff": _NAN, "diff_ci_low": _NAN, "diff_ci_high": _NAN,
        "t_stat": _NAN, "p_ttest": _NAN, "w_stat": _NAN, "p_wilcoxon": _NAN,
        "wilcoxon_method": None, "effect_size_dz": _NAN,
        "prob_improvement": _NAN, "min_p_wilcoxon": min_p_wilcoxon(n),
        "can_reach_significance": bool(min_p_wilcoxon(n) <= alpha / max(family_size, 1)),
        "reason": None,
    }
    if n == 0:
        out["reason"] = "no seeds shared with the baseline"
        return out
    out["mean_diff"] = float(np.mean(d))
    wins = (d > 0) if higher_is_better else (d < 0)
    out["prob_improvement"] = float((wins.sum() + 0.5 * (d == 0).sum()) / n)
    if n < 2:
        out["reason"] = "1 pair: no test possible"
        return out
    sd = float(np.std(d, ddof=1))
    out["diff_ci_low"], out["diff_ci_high"] = _t_interval(out["mean_diff"], sd, n, confidence)
    if sd > 0:
        out["effect_size_dz"] = out["mean_diff"] / sd
        t = sps.ttest_rel(a, b)
        out["t_stat"], out["p_ttest"] = float(t.statistic), float(t.pvalue)
    else:
        out["reason"] = "all differences equal: t-test and d_z undefined"
    if np.all(d == 0):
        out["p_wilcoxon"], out["w_stat"] = 1.0, 0.0
        out["wilcoxon_method"] = "all differences zero"
        out["reason"] = "all differences zero"
        return out
    out["wilcoxon_method"] = _wilcoxon_method(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on small n / ties; the method is reported
        w = sps.wilcoxon(a, b, zero_method="wilcox", method="auto")
    out["w_stat"], out["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
    return out


@contextlib.contextmanager
def _no_gc_collect() -> Iterator[None]:
    """statsmodels' Holm branch runs a full ``gc.collect()`` on every call (0.1-0.5 s in a
    process holding torch/matplotlib objects: half the runtime of a report). A collection has
    no effect on the p-values, so it is skipped for the duration of the call."""
    saved = gc.collect
    gc.collect = lambda *args, **kwargs: 0
    try:
        yield
    finally:
        gc.collect = saved


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05
         ) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down correction (statsmodels ``multipletests(method="holm")``).

    Args:
        pvalues: shape (m,). NaN entries (tests that could not run) are left out of the family
            and come back as NaN / not rejected.
    Returns:
        (reject, p_adjusted): shapes (m,), bool and float.
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    reject = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, _NAN)
    ok = ~np.isnan(p)
    if ok.any():
        with _no_gc_collect():
            rej, adj, _, _ = _multitest.multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adjusted[ok] = rej, adj
    return reject, adjusted


def average_ranks(table: pd.DataFrame, *, higher_is_better: bool = False) -> pd.Series:
    """Average rank of each row across columns (Demsar 2006).

    Args:
        table: rows = labels (regularizers), columns = cells (dataset x model), values = mean
            metric; NaN cells are skipped for that row.
    Returns:
        Series indexed by label, rank 1 = best (lowest error), ties share the average rank,
        sorted ascending.
    """
    ranks = table.rank(axis=0, ascending=not higher_is_better, method="average")
    return ranks.mean(axis=1, skipna=True).sort_values().rename("average_rank")


def friedman(table: pd.DataFrame) -> dict[str, Any]:
    """Friedman test across cells (scipy.stats.friedmanchisquare).

    Args:
        table: rows = labels (the treatments, >= 3), columns = cells (the blocks, >= 2).
            Columns with any NaN are dropped (the test needs complete blocks).
    Returns:
        dict with ``statistic, pvalue, n_labels, n_cells, reason``.
    """
    complete = table.dropna(axis=1, how="any")
    k, m = complete.shape
    out: dict[str, Any] = {"statistic": _NAN, "pvalue": _NAN, "n_labels": int(k),
                           "n_cells": int(m), "reason": None}
    if k < 3 or m < 2:
        out["reason"] = (f"needs >= 3 labels and >= 2 complete cells (have {k} labels, "
                         f"{m} cells)")
        return out
    res = sps.friedmanchisquare(*[complete.loc[lab].to_numpy(float) for lab in complete.index])
    out["statistic"], out["pvalue"] = float(res.statistic), float(res.pvalue)
    return out


def binomial_noise_floor(acc_pct: float | np.ndarray, n_test: int | np.ndarray
                         ) -> float | np.ndarray:
    """Binomial standard error, in percentage points, of one accuracy on n_test images.

    100 * sqrt(p (1 - p) / n_test) with p = acc_pct / 100: 0.24 at 94% on 10k images.
    """
    p = np.asarray(acc_pct, dtype=float) / 100.0
    se = 100.0 * np.sqrt(p * (1.0 - p) / np.asarray(n_test, dtype=float))
    return float(se) if np.ndim(se) == 0 else se


def select_runs(runs_df: pd.DataFrame, *, include_synthetic: bool = False) -> pd.DataFrame:
    """Rows of the ``runs`` table that count: status == "complete", and not synthetic unless
    ``include_synthetic``."""
    keep = runs_df["status"].astype(str) == "complete"
    if not include_synthetic and "synthetic" in runs_df:
        keep &= ~runs_df["synthetic"].fillna(False).astype(bool)
    return runs_df.loc[keep]


def _per_seed(group: pd.DataFrame, metric: str) -> pd.Series:
    """One value per seed (duplicates, e.g. a re-run, are averaged)."""
    return group.groupby("seed")[metric].mean()


def _baseline_label(cell: pd.DataFrame, baseline: str, labels: list[str]) -> str:
    """``baseline`` if it is a label of the cell, else the label of its regularizer's rows."""
    if baseline in labels or "regularizer" not in cell:
        return baseline
    named = cell.loc[cell["regularizer"].astype(str) == baseline, "label"].astype(str).unique()
    return str(named[0]) if len(named) == 1 else baseline


def compare_to_baseline(
    runs_df: pd.DataFrame,
    baseline: str = "weight_decay",
    metric: str = "test_error",
    *,
    include_synthetic: bool = False,
    higher_is_better: bool | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Summaries and paired tests against ``baseline`` for every (dataset, model, label).

    Args:
        runs_df: the store's ``runs`` table (docs/internals.md); uses columns ``dataset, model,
            label, seed, status, synthetic, n_test`` and ``metric``.
        baseline: the reference row: a label, or a regularizer name (the row whose
            ``regularizer`` is ``baseline`` when no label is called that, e.g. "weight_decay"
            displayed as "Baseline"); pairs are the seeds present in both.
        higher_is_better: default True for metrics containing "acc", else False.
    Returns:
        tidy DataFrame, one row per (dataset, model, label): the ``cell_summary`` fields, the
        ``paired_comparison`` fields (NaN on the baseline row), ``family_size`` (non-baseline
        labels in the cell), ``p_wilcoxon_holm, p_ttest_holm, sig_wilcoxon, sig_ttest`` (Holm
        across the labels of the cell at ``alpha``), ``is_baseline, synthetic, n_test,
        mean_acc, noise_floor`` (binomial SE in points), ``metric``.
    """
    if higher_is_better is None:
        higher_is_better = "acc" in metric
    df = select_runs(runs_df, include_synthetic=include_synthetic)
    rows: list[dict[str, Any]] = []
    reference = baseline
    for (dataset, model), cell in df.groupby(["dataset", "model"], sort=True):
        labels = sorted(cell["label"].astype(str).unique())
        baseline = _baseline_label(cell, reference, labels)
        others = [lab for lab in labels if lab != baseline]
        base = _per_seed(cell[cell["label"] == baseline], metric) if baseline in labels else None
        cell_rows = []
        for label in labels:
            grp = cell[cell["label"] == label]
            vals = _per_seed(grp, metric)
            row: dict[str, Any] = {"dataset": dataset, "model": model, "label": label,
                                   "metric": metric}
            row.update(cell_summary(vals.to_numpy()))
            summary_reason = row.pop("reason")
            if label == baseline or base is None:
                comp = paired_comparison([], [], alpha=alpha, family_size=len(others))
                comp = {k: _NAN if isinstance(v, float) else None for k, v in comp.items()}
                comp["reason"] = "baseline row" if label == baseline else \
                    f"no '{baseline}' runs in this cell"
                comp["n_pairs"] = 0
            else:
                shared = vals.index.intersection(base.index)
                comp = paired_comparison(vals.loc[shared].to_numpy(), base.loc[shared].to_numpy(),
                                         higher_is_better=higher_is_better, alpha=alpha,
                                         family_size=len(others))
            reason = "; ".join(r for r in (summary_reason, comp.pop("reason")) if r)
            row.update(comp)
            acc = grp["test_acc"].mean() if "test_acc" in grp else _NAN
            n_test = grp["n_test"].max() if "n_test" in grp else _NAN
            row.update(
                reason=reason or None, is_baseline=label == baseline, family_size=len(others),
                synthetic=bool(grp["synthetic"].fillna(False).astype(bool).any())
                if "synthetic" in grp else False,
                n_test=float(n_test), mean_acc=float(acc),
                noise_floor=binomial_noise_floor(acc, n_test)
                if np.isfinite(acc) and np.isfinite(n_test) and n_test > 0 else _NAN,
            )
            cell_rows.append(row)
        p_w = [r["p_wilcoxon"] if not r["is_baseline"] else _NAN for r in cell_rows]
        p_t = [r["p_ttest"] if not r["is_baseline"] else _NAN for r in cell_rows]
        rej_w, adj_w = holm(np.asarray(p_w, dtype=float), alpha)
        rej_t, adj_t = holm(np.asarray(p_t, dtype=float), alpha)
        for i, r in enumerate(cell_rows):
            r.update(p_wilcoxon_holm=adj_w[i], p_ttest_holm=adj_t[i],
                     sig_wilcoxon=bool(rej_w[i]), sig_ttest=bool(rej_t[i]))
        rows.extend(cell_rows)
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = [
    "dataset", "model", "label", "metric", "n", "mean", "std", "median", "ci_t_low", "ci_t_high",
    "ci_boot_low", "ci_boot_high", "is_baseline", "n_pairs", "mean_diff", "diff_ci_low",
    "diff_ci_high", "t_stat", "p_ttest", "w_stat", "p_wilcoxon", "wilcoxon_method",
    "effect_size_dz", "prob_improvement", "min_p_wilcoxon", "can_reach_significance",
    "family_size", "p_wilcoxon_holm", "p_ttest_holm", "sig_wilcoxon", "sig_ttest", "synthetic",
    "n_test", "mean_acc", "noise_floor", "reason",
]
