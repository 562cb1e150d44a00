"""benchmark.analysis.stats against independent computations: hand cases, enumeration of sign
patterns, closed forms and simulation, not the same scipy call with the same arguments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from benchmark.analysis import power, stats

X = np.array([24.12, 24.55, 24.31, 23.98, 24.66, 24.20, 24.47])
B = np.array([24.40, 24.93, 24.22, 24.51, 25.03, 24.71, 24.69])


def enumerate_wilcoxon(d) -> float:
    """Exact two-sided signed-rank p by listing all 2^k sign patterns of the non-zero |d|
    (average ranks for ties): min(1, 2 min(P(T <= t), P(T >= t)))."""
    d = np.asarray(d, float)
    d = d[d != 0]
    if d.size < 2:
        return 1.0
    ranks = sps.rankdata(np.abs(d))
    t = ranks[d > 0].sum()
    sums = np.array([ranks[np.array(s, bool)].sum()
                     for s in itertools.product([0, 1], repeat=d.size)])
    return min(1.0, 2 * min(np.mean(sums <= t + 1e-9), np.mean(sums >= t - 1e-9)))


# --- summaries and intervals --------------------------------------------------------------

def test_cell_summary_t_interval_by_hand_and_no_bootstrap_at_small_n():
    s = stats.cell_summary(X)
    half = sps.t.ppf(0.975, 6) * X.std(ddof=1) / math.sqrt(7)
    assert s["n"] == 7 and s["mean"] == pytest.approx(X.mean())
    assert (s["ci_t_low"], s["ci_t_high"]) == pytest.approx((X.mean() - half, X.mean() + half))
    assert math.isnan(s["ci_boot_low"])  # n < BOOTSTRAP_MIN_N: no percentile bootstrap


def test_bootstrap_only_from_the_stated_threshold():
    y = np.random.default_rng(5).normal(25, 1, size=stats.BOOTSTRAP_MIN_N)
    s = stats.cell_summary(y)
    assert s["ci_boot_low"] < s["mean"] < s["ci_boot_high"]
    assert math.isnan(stats.cell_summary(y[:-1])["ci_boot_low"])


def test_intervals_stay_inside_0_100():
    """The leaderboard printed 24.26 [-74.74, 123.26] for a cell with a stuck run."""
    s = stats.cell_summary([0.3, 0.5, 72.0])
    assert s["ci_t_low"] == 0.0 and s["ci_t_high"] <= 100.0
    hi = stats.cell_summary([99.5, 99.9, 40.0])
    assert hi["ci_t_high"] == 100.0
    d = stats.paired_comparison([0, 0, 99.0], [99.0, 99.0, 0])
    assert -100.0 <= d["diff_ci_low"] and d["diff_ci_high"] <= 100.0


def test_small_n_reasons():
    assert stats.cell_summary([])["reason"] == "no counted runs"
    one = stats.cell_summary([24.0])
    assert one["mean"] == 24.0 and math.isnan(one["std"]) and "n=1" in one["reason"]


# --- Wilcoxon: exact, on counts, independent of scipy's version ----------------------------

@pytest.mark.parametrize("d", [
    [3, -1, 2, 0, 5], [1, 1, -1, 2, 2, 0, 0, 3], [-4, -4, -2, -1, 3, 5, 6],
    [2, 2, 2], [1, 0, 0, 0], [-1, -2, -3, -4, -5, -6], [7, -7, 7, -7, 1]])
def test_wilcoxon_matches_enumeration_of_sign_patterns(d):
    _, p, k = stats.wilcoxon_exact(d)
    assert k == sum(v != 0 for v in d)
    assert p == pytest.approx(enumerate_wilcoxon(d), abs=1e-12)


def test_wilcoxon_passes_an_exact_method_explicitly(monkeypatch):
    """scipy < 1.15 silently used a normal approximation with zeros (0.18 instead of 0.5)."""
    seen = []
    real = sps.wilcoxon

    def spy(*args, **kwargs):
        seen.append(kwargs.get("method", "auto"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stats.sps, "wilcoxon", spy)
    _, p, _ = stats.wilcoxon_exact([0, 0, 1, -2, 3, 4])
    assert seen and not isinstance(seen[0], str)  # a PermutationMethod, never "auto"
    assert p == pytest.approx(enumerate_wilcoxon([1, -2, 3, 4]))


def test_min_p_counts_only_non_zero_differences():
    assert [stats.min_p_wilcoxon(n) for n in (1, 3, 4, 5, 9)] == \
        [1.0, 0.25, 0.125, 0.0625, pytest.approx(0.0039, abs=1e-4)]
    out = stats.paired_comparison([10, 11, 12, 13], [10, 10, 10, 10])  # one zero difference
    assert out["n_nonzero"] == 3 and out["min_p_wilcoxon"] == 0.25
    assert out["p_wilcoxon"] == pytest.approx(0.25)  # all three non-zero of one sign


def test_counts_keep_ties_that_float_rounding_would_break():
    """30.1 - 30.0 and 50.2 - 50.3 differ in floats; the error counts behind them tie."""
    cx, cb = np.array([301, 502, 703, 1004, 205, 406]), np.array([300, 503, 702, 1002, 208, 405])
    x, b = cx / 1000 * 100, cb / 1000 * 100
    assert enumerate_wilcoxon(cx - cb) != enumerate_wilcoxon(x - b)  # rounding matters here
    out = stats.paired_comparison(x, b, counts=(cx, cb))
    assert out["p_wilcoxon"] == pytest.approx(enumerate_wilcoxon(cx - cb))


# --- the primary test and its companions -----------------------------------------------------

def test_paired_t_and_difference_interval_by_hand():
    d = X - B
    out = stats.paired_comparison(X, B)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(7))
    assert out["t_stat"] == pytest.approx(t)
    assert out["p_ttest"] == pytest.approx(2 * sps.t.sf(abs(t), 6))
    half = sps.t.ppf(0.975, 6) * d.std(ddof=1) / math.sqrt(7)
    assert (out["diff_ci_low"], out["diff_ci_high"]) == pytest.approx((d.mean() - half,
                                                                       d.mean() + half))
    assert out["dz"] == pytest.approx(d.mean() / d.std(ddof=1))


def test_steady_shift_at_n3_is_significant_by_t_though_not_by_wilcoxon():
    out = stats.paired_comparison([9.0, 10.1, 11.05], [10.0, 11.0, 12.0])
    assert out["p_ttest"] < 0.01 and out["p_wilcoxon"] == 0.25


def test_dz_interval_agrees_with_the_large_n_normal_approximation():
    n, d = 400, 0.3
    lo, hi = stats.dz_interval(d * math.sqrt(n), n)
    se = math.sqrt(1 / n + d * d / (2 * n))
    assert lo == pytest.approx(d - 1.96 * se, abs=0.005)
    assert hi == pytest.approx(d + 1.96 * se, abs=0.005)
    lo0, hi0 = stats.dz_interval(0.0, 10)
    assert lo0 == pytest.approx(-hi0)


def test_seeds_needed_against_a_hand_power_loop_and_the_docs():
    def by_hand(sd, alpha, delta=0.3):
        for n in range(2, 500):
            crit = sps.t.ppf(1 - alpha / 2, n - 1)
            nc = delta / sd * math.sqrt(n)
            power = sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
            if power >= 0.8:
                return n
    assert power.seeds_needed(0.3, alpha=0.05) == by_hand(0.3, 0.05) == 10
    assert power.seeds_needed(0.3, alpha=0.05 / 8) == by_hand(0.3, 0.05 / 8) == 17
    assert math.isnan(power.seeds_needed(0.0, alpha=0.05))


def test_win_rate_and_p_superiority_by_counting_pairs():
    x, b = np.array([1.0, 3.0, 2.0]), np.array([2.0, 2.0, 2.0])
    out = stats.paired_comparison(x, b)
    assert out["win_rate"] == pytest.approx((1 + 0.5) / 3)  # seed 0 wins, seed 2 ties
    pairs = [(1.0 if xi < bj else 0.5 if xi == bj else 0.0) for xi in x for bj in b]
    assert out["p_superiority"] == pytest.approx(np.mean(pairs))
    acc = stats.paired_comparison(x, b, higher_is_better=True)
    assert acc["p_superiority"] == pytest.approx(1 - np.mean(pairs))


def test_p_superiority_uses_every_complete_run_not_only_shared_seeds():
    x, b = np.array([1.0, 3.0]), np.array([2.0, 2.0])
    out = stats.paired_comparison(x, b, unpaired=(np.array([1.0, 3.0, 0.0]), np.array([2.0])))
    assert out["p_superiority"] == pytest.approx(2 / 3)  # 1 < 2 and 0 < 2; 3 > 2


def test_success_test_is_fisher_exact_by_hypergeometric_enumeration():
    # 1/4 trained vs 4/4: tables as or more extreme under fixed margins (5 trained of 8)
    from math import comb
    probs = {k: comb(4, k) * comb(4, 5 - k) / comb(8, 5) for k in range(1, 5)}
    p_obs = probs[1]
    assert stats.success_test(1, 4, 4, 4) == pytest.approx(
        sum(p for p in probs.values() if p <= p_obs + 1e-12))
    assert math.isnan(stats.success_test(0, 0, 3, 3))
    rates = stats.success_rates({"complete": 2, "diverged": 1, "stuck": 1})
    assert rates == {"runs": 4, "trained": 0.5, "diverged": 0.25, "stuck": 0.25, "failed": 0.0}


def test_binomial_noise_floor_values_from_statistics_md():
    assert stats.binomial_noise_floor(75.0, 10_000) == pytest.approx(0.433, abs=1e-3)


# --- Holm --------------------------------------------------------------------------------------

def test_holm_matches_statsmodels_and_hand_case():
    p = [0.01, 0.04, 0.03, 0.2]
    rej, adj = stats.holm(p)
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.2])  # 4*0.01, max(3*.03, 2*.04), ...
    assert list(rej) == list(multipletests(p, method="holm")[0])


def test_holm_leaves_nan_out_of_the_family():
    rej, adj = stats.holm([0.01, float("nan"), 0.04])
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and not rej[1]


def test_holm_skips_statsmodels_gc_collect_and_restores_it():
    import gc

    original = gc.collect
    calls = []
    try:
        gc.collect = lambda *a, **k: calls.append(1) or 0
        multipletests([0.01, 0.02], method="holm")
        assert calls == [1]  # the spy sees statsmodels' collection: this test can fail
        calls.clear()
        stats.holm([0.01, 0.02])
        assert calls == []  # ... and holm() skipped it
        restored = gc.collect
    finally:
        gc.collect = original
    assert restored is not original and restored.__name__ == "<lambda>"  # our spy came back
