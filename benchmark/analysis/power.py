"""What a table can show: minimum detectable difference, seed estimate, test-set variance
components, and equivalence with a published single run.

Pure functions on arrays. Power is the paired t's noncentral-t power (scipy), intervals of
a standard deviation from the chi-square distribution, the equivalence test is TOST (two
one-sided t-tests). The protocol is docs/statistics.md ("Power", "Seeds x images",
"Paper comparison"); simulation checks of every claim are in tests/benchmark/test_stats_power.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = ["DETECT_POINTS", "POWER", "detectable_effect", "paired_t_power", "equivalence_single_run",
           "min_detectable_difference", "pooled_sd", "seed_estimate",
           "seeds_needed", "variance_components"]

DETECT_POINTS = 0.3  # the difference the seed estimate is about, in percentage points
POWER = 0.8
_NAN = float("nan")


def paired_t_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test on ``n`` pairs at level ``alpha`` for a true
    standardized difference ``effect`` (mean / SD of the differences): the noncentral t with
    df = n - 1 and noncentrality effect sqrt(n) beyond +-t_{1-alpha/2}.

    The formula of statsmodels ``TTestPower.power``, written out because that call returns NaN
    where scipy's noncentral-t cdf of the far tail fails (n=3, alpha=0.01, effect 7.2-7.3),
    and ``solve_power`` then stops short (7.17 at power 0.787). The far tail is below 1e-6
    there, so a NaN in it counts as 0."""
    if n < 2:
        return _NAN
    df, nc = n - 1, effect * math.sqrt(n)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    upper, lower = float(sps.nct.sf(crit, df, nc)), float(sps.nct.cdf(-crit, df, nc))
    return upper + (0.0 if math.isnan(lower) else lower)


def detectable_effect(n: int, alpha: float, power: float = POWER) -> float:
    """The standardized mean difference (mean / SD of the paired differences) that a two-sided
    paired t-test on ``n`` pairs at level ``alpha`` detects with probability ``power``
    (bisection on :func:`paired_t_power`); NaN below 2 pairs."""
    if n < 2:
        return _NAN

    def reached(effect: float) -> bool:
        return paired_t_power(effect, n, alpha) >= power

    # Power increases with the effect: double, then bisect to float precision.
    lo, hi = 0.0, 1.0
    while not reached(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            return _NAN
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi


def min_detectable_difference(sd_diff: float, n: int, alpha: float, power: float = POWER
                              ) -> float:
    """Minimum detectable paired difference (points): ``sd_diff`` x :func:`detectable_effect`.
    Smaller true differences are detected with probability below ``power``; NaN without a
    spread or below 2 pairs."""
    if not np.isfinite(sd_diff) or sd_diff <= 0:
        return _NAN
    return float(sd_diff) * detectable_effect(n, alpha, power)


def pooled_sd(sds: Sequence[float] | np.ndarray, ns: Sequence[int] | np.ndarray
              ) -> tuple[float, int]:
    """(pooled SD, its degrees of freedom) of several samples' SDs: sqrt(sum (n-1) s^2 /
    sum (n-1)). Rows of one column share the baseline runs, so their differences are
    correlated and the df overstate the independent information somewhat."""
    s, n = np.asarray(sds, dtype=float), np.asarray(ns, dtype=float)
    ok = np.isfinite(s) & (n >= 2)
    df = int(np.sum(n[ok] - 1))
    if df < 1:
        return _NAN, 0
    return float(math.sqrt(np.sum((n[ok] - 1) * s[ok] ** 2) / df)), df


def seeds_needed(sd_diff: float, *, alpha: float, delta: float = DETECT_POINTS,
                 power: float = POWER) -> float:
    """The smallest number of seeds (>= 2) for which a two-sided paired t-test at level
    ``alpha`` detects a mean difference of ``delta`` with probability ``power``, given the SD of
    the per-seed differences (:func:`paired_t_power`); NaN without a spread."""
    if not np.isfinite(sd_diff) or sd_diff <= 0:
        return _NAN
    effect = delta / sd_diff

    def enough(n: int) -> bool:
        return paired_t_power(effect, n, alpha) >= power

    # Power grows with n: double, then bisect (the smallest integer n, no solver tolerance).
    hi = 2
    while not enough(hi):
        if hi > 10**7:
            return _NAN
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return float(hi)


def seed_estimate(sd: float, df: int, *, alpha: float, floor_sd: float = _NAN,
                  delta: float = DETECT_POINTS, power: float = POWER,
                  confidence: float = 0.95) -> dict[str, Any]:
    """Seeds needed to detect ``delta`` at level ``alpha``, from a pooled SD with ``df`` degrees
    of freedom, with the interval that the SD's own uncertainty implies.

    The SD's confidence interval is sd * sqrt(df / chi2_{df}) at the two tails (exact for
    normal differences); the seed count is monotone in the SD, so the interval maps through.
    Every SD is first raised to ``floor_sd`` (the flip floor: ``churn_sd`` of
    :func:`variance_components`) when that is larger.

    Returns:
        dict with ``seeds, seeds_low, seeds_high, sd, sd_low, sd_high, df, floor_sd,
        floor_seeds`` (seeds at the floor alone) and ``floored`` (the point estimate was raised).
    """
    out: dict[str, Any] = {"seeds": _NAN, "seeds_low": _NAN, "seeds_high": _NAN, "sd": sd,
                           "sd_low": _NAN, "sd_high": _NAN, "df": int(df), "floor_sd": floor_sd,
                           "floor_seeds": _NAN, "floored": False}
    if df < 1 or not np.isfinite(sd) or sd <= 0:
        return out
    a = (1 - confidence) / 2
    out["sd_low"] = sd * math.sqrt(df / sps.chi2.ppf(1 - a, df))
    out["sd_high"] = sd * math.sqrt(df / sps.chi2.ppf(a, df))
    floor = floor_sd if np.isfinite(floor_sd) else 0.0

    def need(s: float) -> float:
        return seeds_needed(max(s, floor), alpha=alpha, delta=delta, power=power)

    out["seeds"], out["seeds_low"], out["seeds_high"] = need(sd), need(out["sd_low"]), \
        need(out["sd_high"])
    out["floored"] = floor > sd
    if floor > 0:
        out["floor_seeds"] = seeds_needed(floor, alpha=alpha, delta=delta, power=power)
    return out


def variance_components(diff: np.ndarray) -> dict[str, Any]:
    """Seeds x images decomposition of a paired accuracy difference.

    ``diff[s, i]`` = (row correct) - (baseline correct) on image i for seed s, in {-1, 0, 1}.
    Two-way ANOVA without replication, diff = mu + seed_s + image_i + residual_si; the image
    variance component sigma_img^2 = max(0, (MS_images - MS_residual) / S) is the image-level
    method effect: its share of the mean difference, sigma_img / sqrt(N), is test-set sampling
    error that more seeds cannot remove (only more test images can). Needs S >= 2 seeds.

    Returns:
        dict (points) with ``n_seeds, n_images, seed_sd`` (SD over seeds of the per-seed mean
        difference), ``se_seeds`` (seed_sd / sqrt(S)), ``image_component`` (100 sigma_img /
        sqrt(N)), ``churn_sd`` (100 sqrt(MS_residual / N): the within-seed image churn), and
        ``reason`` (why NaN).
    """
    y = np.asarray(diff, dtype=float)
    s, n = y.shape if y.ndim == 2 else (0, 0)
    out: dict[str, Any] = {"n_seeds": int(s), "n_images": int(n), "seed_sd": _NAN,
                           "se_seeds": _NAN, "image_component": _NAN, "churn_sd": _NAN,
                           "reason": None}
    if s < 2 or n < 2:
        out["reason"] = "needs per-image correctness on >= 2 shared seeds"
        return out
    seed_means, image_means, grand = y.mean(axis=1), y.mean(axis=0), y.mean()
    ms_images = s * np.sum((image_means - grand) ** 2) / (n - 1)
    resid = y - seed_means[:, None] - image_means[None, :] + grand
    ms_resid = np.sum(resid ** 2) / ((s - 1) * (n - 1))
    sigma2_img = max(0.0, (ms_images - ms_resid) / s)
    out["seed_sd"] = 100.0 * float(np.std(seed_means, ddof=1))
    out["se_seeds"] = out["seed_sd"] / math.sqrt(s)
    out["image_component"] = 100.0 * math.sqrt(sigma2_img / n)
    out["churn_sd"] = 100.0 * math.sqrt(ms_resid / n)
    return out


def equivalence_single_run(values: Sequence[float] | np.ndarray, published: float, *,
                           margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """TOST equivalence of our runs' mean with ONE published run, within +-``margin``.

    The published run is one draw with the same spread as ours if the set-up is faithful, so
    the difference mean - published has SE s sqrt(1 + 1/n) with n - 1 df (the prediction
    interval's). Equivalence is shown when both one-sided t-tests reject at ``alpha``, i.e. the
    1 - 2 alpha interval of the difference lies inside (-margin, margin). As n grows the SE
    falls only to s (the published run's own spread): when z_{1-alpha} s >= margin no number
    of seeds can show equivalence (``reachable`` False, judged at our s).

    Returns:
        dict with ``n, difference, se, p_tost`` (the larger one-sided p), ``equivalent``,
        ``reachable``, ``reason``.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "difference": _NAN, "se": _NAN, "p_tost": _NAN,
                           "equivalent": False, "reachable": None, "reason": None}
    if n:
        out["difference"] = float(x.mean()) - published
    if n < 2:
        out["reason"] = "fewer than 2 runs: no spread"
        return out
    sd = float(np.std(x, ddof=1))
    out["reachable"] = bool(sps.norm.ppf(1 - alpha) * sd < margin)
    if sd == 0:
        out["reason"] = "no spread between our runs"
        return out
    se = sd * math.sqrt(1 + 1 / n)
    d = out["difference"]
    p_low = float(sps.t.sf((d + margin) / se, n - 1))   # H0: difference <= -margin
    p_high = float(sps.t.cdf((d - margin) / se, n - 1))  # H0: difference >= +margin
    out.update(se=se, p_tost=max(p_low, p_high), equivalent=max(p_low, p_high) < alpha)
    return out


def table_power(table, alpha: float = 0.05) -> dict[str, Any]:
    """What a whole comparison table can show, pooled over its tested rows (every column).

    Args:
        table: the tidy table of :func:`benchmark.analysis.cells.compare_to_baseline` (columns
            ``is_baseline, sd_diff, n_pairs, churn_sd, family_size``).
    Returns:
        dict with ``level`` (Holm's first threshold alpha / family), ``n`` (fewest pairs of a
        row with >= 2),
        ``sd, df`` (pooled SD of the paired differences), ``mdd`` (minimum detectable paired
        difference at 80% power) and ``seeds`` (:func:`seed_estimate` for DETECT_POINTS at
        ``level``, floored by the rows' flip floors pooled on the variance scale).
    """
    rows = table[~table["is_baseline"].astype(bool)]
    family = int(table["family_size"].max()) if len(table) else 0
    level = alpha / max(family, 1)
    sd, df = pooled_sd(rows["sd_diff"], rows["n_pairs"].fillna(0))
    pairs = rows["n_pairs"].fillna(0)
    n = int(pairs[pairs >= 2].min()) if (pairs >= 2).any() else 0  # the weakest tested row
    floors = rows["churn_sd"].to_numpy(float)
    floors = floors[np.isfinite(floors)]
    floor = float(math.sqrt(np.mean(floors ** 2))) if floors.size else _NAN
    return {"level": level, "family": family, "n": n, "sd": sd, "df": df,
            "mdd": min_detectable_difference(sd, n, level),
            "seeds": seed_estimate(sd, df, alpha=level, floor_sd=floor)}
