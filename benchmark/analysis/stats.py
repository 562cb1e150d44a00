"""Statistics for CoMHE-Bench: per-cell summaries and paired tests against a baseline.

Pure functions on arrays and DataFrames. The unit of replication is a training run with its
own seed; pairs are matched on ``seed``. Tests are delegated to scipy.stats and statsmodels; this
module arranges inputs and names outputs. The protocol (primary test, robustness column,
intervals, noise floor) is docs/statistics.md; what a table can show (power, seeds, variance
components, equivalence) is :mod:`benchmark.analysis.power`; across-cell analyses are in
:mod:`benchmark.analysis.stats_across`, set-up checks in :mod:`benchmark.analysis.cells`.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats import multitest as _multitest

from benchmark import correct_bits

__all__ = [
    "BOOTSTRAP_COVERAGE", "BOOTSTRAP_MIN_N", "CONFIDENCE", "binomial_noise_floor",
    "cell_summary", "dz_interval", "holm", "min_p_wilcoxon", "paired_comparison",
    "prob_superiority", "success_rates", "success_test", "wilcoxon_exact",
]

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
# Below this many values a percentile bootstrap undercovers badly (simulated coverage of a
# nominal 95% interval: 0.75 at n=3, 0.84 at n=5); t intervals are used instead.
BOOTSTRAP_MIN_N = 20
# Its simulated coverage at BOOTSTRAP_MIN_N normal values, nominal 0.95 (the tables print it;
# tests/benchmark/test_stats_power.py re-measures it).
BOOTSTRAP_COVERAGE = 0.926
_NAN = float("nan")
# scipy >= 1.15 takes ``rng``; older releases take ``random_state``.
_BOOT_RNG_KW = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"


def _as_1d(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    return arr[~np.isnan(arr)]


def _t_interval(mean: float, sd: float, n: int, confidence: float,
                bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Two-sided t interval of a mean, clipped to ``bounds``; (nan, nan) when n < 2."""
    if n < 2:
        return _NAN, _NAN
    half = 0.0 if sd == 0.0 else float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, confidence: float, seed: int
               ) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: the interval is still defined
        res = sps.bootstrap(samples, statistic, confidence_level=confidence,
                            n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", vectorized=False,
                            **{_BOOT_RNG_KW: np.random.default_rng(seed)})
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def cell_summary(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                 bounds: tuple[float, float] | None = (0.0, 100.0), seed: int = BOOTSTRAP_SEED
                 ) -> dict[str, Any]:
    """Summary of one cell's final metric over seeds.

    Args:
        values: shape (n,), one final metric per seed. NaNs are dropped.
        bounds: the metric's range (percentages: [0, 100]); intervals are clipped to it.
    Returns:
        dict with ``n, mean, std`` (ddof=1), ``median``, ``ci_t_low, ci_t_high`` (t interval of
        the mean, clipped to ``bounds``), ``ci_boot_low, ci_boot_high`` (percentile bootstrap of
        the mean, seeded; NaN below BOOTSTRAP_MIN_N values) and ``reason`` (why a field is NaN).
    """
    x = _as_1d(values)
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "mean": _NAN, "std": _NAN, "median": _NAN, "ci_t_low": _NAN,
                           "ci_t_high": _NAN, "ci_boot_low": _NAN, "ci_boot_high": _NAN,
                           "reason": None}
    if n == 0:
        out["reason"] = "no counted runs"
        return out
    out["mean"], out["median"] = float(np.mean(x)), float(np.median(x))
    if n < 2:
        out["reason"] = "n=1: no spread or interval from a single run"
        return out
    out["std"] = float(np.std(x, ddof=1))
    out["ci_t_low"], out["ci_t_high"] = _t_interval(out["mean"], out["std"], n, confidence, bounds)
    if n >= BOOTSTRAP_MIN_N:
        out["ci_boot_low"], out["ci_boot_high"] = _bootstrap((x,), np.mean, confidence, seed)
    return out


def min_p_wilcoxon(n: int) -> float:
    """Smallest two-sided p an exact Wilcoxon signed-rank test gives on n NON-ZERO differences:
    2 / 2**n (0.25 at n=3, 0.0020 at n=10); 1.0 at n <= 1."""
    return 1.0 if n <= 1 else min(1.0, 2.0 / 2.0**n)


def wilcoxon_exact(d: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """(statistic, two-sided p, k): exact signed-rank test on the non-zero differences.

    Zeros are dropped first (Wilcoxon's treatment); the p-value enumerates all 2**k sign
    patterns of the k non-zero differences, ties ranked by their average rank
    (``scipy.stats.wilcoxon`` with an explicit exact ``PermutationMethod``: scipy's ``auto``
    method changed between releases). Pass integers (error counts) so that rounding cannot
    split a tie. k < 2 gives p = 1.
    """
    nz = _as_1d(d)
    nz = nz[nz != 0]
    k = int(nz.size)
    if k < 2:  # 0 or 1 non-zero difference: every sign pattern is as extreme (p = 1)
        return (float(nz[nz > 0].size), 1.0, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(nz, zero_method="wilcox", alternative="two-sided",
                           method=sps.PermutationMethod(n_resamples=np.inf))
    return float(res.statistic), float(min(1.0, res.pvalue)), k


def dz_interval(t_stat: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Confidence interval of Cohen's d_z = mean(d) / sd(d) by inverting the noncentral t
    distribution of t = d_z sqrt(n) (df = n - 1); a bound is NaN where scipy cannot evaluate
    the noncentral t that far out (very large t at small n)."""
    if n < 2 or not np.isfinite(t_stat):
        return _NAN, _NAN
    df, a = n - 1, (1 - confidence) / 2

    def ncp_at(q: float) -> float:  # the ncp whose distribution puts t_stat at quantile q
        f = lambda nc: float(sps.nct.cdf(t_stat, df, nc)) - q  # noqa: E731 - decreasing in nc
        lo, hi = t_stat - 1.0, t_stat + 1.0
        for _ in range(40):  # widen the bracket until it holds the root
            if f(lo) > 0:
                break
            lo -= hi - lo
        for _ in range(40):
            if f(hi) < 0:
                break
            hi += hi - lo
        if not f(lo) > 0 > f(hi):  # the cdf is not computable that far out
            return _NAN
        try:
            return optimize.brentq(f, lo, hi)
        except ValueError:  # NaN inside the bracket
            return _NAN

    return ncp_at(1 - a) / math.sqrt(n), ncp_at(a) / math.sqrt(n)


def prob_superiority(x: np.ndarray, y: np.ndarray, *, x_better_when_lower: bool = True
                     ) -> float:
    """P(X > Y) as rliable's probability of improvement: the chance that a random run of x
    beats a random run of y (unpaired, ties count 1/2), U / (n m) from scipy's Mann-Whitney."""
    x, y = _as_1d(x), _as_1d(y)
    if not x.size or not y.size:
        return _NAN
    first, second = (y, x) if x_better_when_lower else (x, y)
    return float(sps.mannwhitneyu(first, second).statistic) / (x.size * y.size)


def success_rates(counts: dict[str, int]) -> dict[str, Any]:
    """Outcome shares of one row: ``trained`` (complete), ``diverged``, ``stuck`` and
    ``failed`` over all its runs. Returns those fractions and ``runs`` (the total)."""
    total = int(sum(counts.get(k, 0) for k in ("complete", "diverged", "stuck", "failed")))
    out: dict[str, Any] = {"runs": total}
    for name, key in (("trained", "complete"), ("diverged", "diverged"), ("stuck", "stuck"),
                      ("failed", "failed")):
        out[name] = counts.get(key, 0) / total if total else _NAN
    return out


def success_test(trained: int, runs: int, base_trained: int, base_runs: int) -> float:
    """Two-sided Fisher exact p (``scipy.stats.fisher_exact``) that a row's share of trained
    runs equals the baseline's; NaN when either has no runs."""
    if runs < 1 or base_runs < 1:
        return _NAN
    table = [[trained, runs - trained], [base_trained, base_runs - base_trained]]
    return float(sps.fisher_exact(table, alternative="two-sided").pvalue)


def paired_comparison(x: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, *,
                      higher_is_better: bool = False, confidence: float = CONFIDENCE,
                      counts: tuple[np.ndarray, np.ndarray] | None = None,
                      unpaired: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Compare a method with the baseline on runs paired by seed.

    Args:
        x, baseline: shape (n,), aligned so that ``x[i]`` and ``baseline[i]`` share a seed.
        counts: the same runs as integer counts (errors or correct images on the test set) for
            the Wilcoxon column; None uses ``x - baseline`` as they are.
        unpaired: (every counted run of x, every counted run of the baseline), shared seed or
            not, for P(X > Y); None uses the pairs.
    Returns:
        dict with ``n_pairs, mean_diff`` (mean of x - baseline), ``sd_diff``, ``diff_ci_low,
        diff_ci_high`` (t interval, within [-100, 100]), ``diff_boot_low, diff_boot_high`` (percentile bootstrap of
        the mean difference, n >= BOOTSTRAP_MIN_N), ``t_stat, p_ttest`` (paired t, the primary
        test), ``dz, dz_ci_low, dz_ci_high`` (d_z = mean/sd of differences, noncentral-t CI),
        ``w_stat, p_wilcoxon, n_nonzero, min_p_wilcoxon`` (exact signed-rank on the counts),
        ``win_rate`` (paired: fraction of seeds where x beats the baseline, ties 1/2),
        ``p_superiority`` (rliable's P(X > Y) over the ``unpaired`` runs) with
        ``p_sup_ci_low, p_sup_ci_high`` (bootstrap, both samples >= BOOTSTRAP_MIN_N) and
        ``reason``.
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
    out: dict[str, Any] = {k: _NAN for k in (
        "mean_diff", "sd_diff", "diff_ci_low", "diff_ci_high", "diff_boot_low", "diff_boot_high",
        "t_stat", "p_ttest", "dz", "dz_ci_low", "dz_ci_high", "w_stat", "p_wilcoxon", "win_rate",
        "p_superiority", "p_sup_ci_low", "p_sup_ci_high")}
    out.update(n_pairs=n, n_nonzero=0, min_p_wilcoxon=1.0, reason=None)
    if n == 0:
        out["reason"] = "no seeds shared with the baseline"
        return out
    lower = not higher_is_better
    out["mean_diff"] = float(np.mean(d))
    wins = (d < 0) if lower else (d > 0)
    out["win_rate"] = float((wins.sum() + 0.5 * (d == 0).sum()) / n)
    ux, ub = (a, b) if unpaired is None else (_as_1d(unpaired[0]), _as_1d(unpaired[1]))
    out["p_superiority"] = prob_superiority(ux, ub, x_better_when_lower=lower)
    if min(ux.size, ub.size) >= BOOTSTRAP_MIN_N:
        out["p_sup_ci_low"], out["p_sup_ci_high"] = _bootstrap(
            (ux, ub), lambda u, v: prob_superiority(u, v, x_better_when_lower=lower),
            confidence, 0)
    dc = d if counts is None else np.asarray(counts[0])[keep] - np.asarray(counts[1])[keep]
    out["w_stat"], out["p_wilcoxon"], out["n_nonzero"] = wilcoxon_exact(dc)
    out["min_p_wilcoxon"] = min_p_wilcoxon(out["n_nonzero"])
    if n < 2:
        out["reason"] = "1 pair: no test possible"
        return out
    sd = float(np.std(d, ddof=1))
    out["sd_diff"] = sd
    out["diff_ci_low"], out["diff_ci_high"] = _t_interval(out["mean_diff"], sd, n, confidence,
                                                          (-100.0, 100.0))
    if n >= BOOTSTRAP_MIN_N:
        out["diff_boot_low"], out["diff_boot_high"] = _bootstrap((d,), np.mean, confidence, 0)
    if sd > 0:
        t = sps.ttest_rel(a, b)
        out["t_stat"], out["p_ttest"] = float(t.statistic), float(t.pvalue)
        out["dz"] = out["mean_diff"] / sd
        out["dz_ci_low"], out["dz_ci_high"] = dz_interval(out["t_stat"], n, confidence)
    else:
        out["reason"] = "all differences equal: t-test and d_z undefined"
    return out


@contextlib.contextmanager
def _no_gc_collect() -> Iterator[None]:
    """statsmodels' Holm branch runs a full ``gc.collect()`` on every call (0.1-0.5 s in a
    process holding torch/matplotlib objects). A collection has no effect on the p-values, so
    it is skipped for the duration of the call."""
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


def binomial_noise_floor(acc_pct: float | np.ndarray, n_test: int | np.ndarray
                         ) -> float | np.ndarray:
    """Test-set sampling error of ONE accuracy, in points: the binomial SE
    100 * sqrt(p (1 - p) / n_test) with p = acc_pct / 100 (0.43 at 75% on 10k images)."""
    p = np.asarray(acc_pct, dtype=float) / 100.0
    se = 100.0 * np.sqrt(p * (1.0 - p) / np.asarray(n_test, dtype=float))
    return float(se) if np.ndim(se) == 0 else se


def decode_correct(values: pd.Series) -> dict[Any, np.ndarray | None]:
    """{seed: per-image correctness} from the store's ``correct`` column (JSON strings)."""
    out = {}
    for seed, v in values.items():
        try:
            out[seed] = correct_bits.decode(json.loads(v)) if isinstance(v, str) else None
        except ValueError:
            out[seed] = None
    return out
