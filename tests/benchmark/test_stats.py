"""benchmark.stats against scipy.stats / statsmodels on fixed data, plus hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from benchmark import stats

X = np.array([24.12, 24.55, 24.31, 23.98, 24.66, 24.20, 24.47])
B = np.array([24.40, 24.93, 24.22, 24.51, 25.03, 24.71, 24.69])  # distinct |differences|


def make_runs(labels=("weight_decay", "mhe", "rp_comhe"), seeds=range(5),
              cells=(("cifar10", "cnn9"),),
              shift=None, synthetic=False, sd=0.2, seed=0) -> pd.DataFrame:
    """A synthetic ``runs`` table following docs/internals.md (only the columns stats uses)."""
    rng = np.random.default_rng(seed)
    shift = shift or {"weight_decay": 0.0, "mhe": -1.0, "rp_comhe": -2.0}
    rows = []
    for ds, model in cells:
        for lab in labels:
            for s in seeds:
                err = {"cifar10": 6.0}.get(ds, 25.0) + shift.get(lab, 0.0) + rng.normal(0, sd)
                rows.append({"run_id": f"{ds}-{model}-{lab}-{s}", "label": lab, "dataset": ds,
                                 "model": model, "seed": s, "status": "complete", "reason": None,
                                 "test_error": err, "test_acc": 100 - err, "n_test": 10000,
                                 "synthetic": synthetic, "iterations": 75000})
    return pd.DataFrame(rows)


# --- cell_summary -----------------------------------------------------------------------------

def test_cell_summary_matches_scipy():
    s = stats.cell_summary(X)
    assert s["n"] == 7 and s["reason"] is None
    assert s["mean"] == pytest.approx(X.mean())
    assert s["std"] == pytest.approx(X.std(ddof=1))
    assert s["median"] == pytest.approx(np.median(X))
    lo, hi = sps.t.interval(0.95, df=6, loc=X.mean(), scale=sps.sem(X))
    assert (s["ci_t_low"], s["ci_t_high"]) == pytest.approx((lo, hi))
    boot = sps.bootstrap((X,), np.mean, method="percentile", n_resamples=9999,
                         rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert s["ci_boot_low"] == pytest.approx(boot.confidence_interval.low)
    assert s["ci_boot_high"] == pytest.approx(boot.confidence_interval.high)
    assert s["ci_boot_low"] < s["mean"] < s["ci_boot_high"]


def test_cell_summary_is_seeded():
    y = np.random.default_rng(5).normal(size=20)
    assert stats.cell_summary(y) == stats.cell_summary(y)
    assert stats.cell_summary(y, seed=1)["ci_boot_low"] != stats.cell_summary(y)["ci_boot_low"]


def test_cell_summary_small_n_gives_nan_with_reason():
    one = stats.cell_summary([24.0])
    assert one["n"] == 1 and one["mean"] == 24.0 and one["median"] == 24.0
    assert all(math.isnan(one[k]) for k in ("std", "ci_t_low", "ci_t_high", "ci_boot_low"))
    assert "n=1" in one["reason"]
    none = stats.cell_summary([np.nan])
    assert none["n"] == 0 and math.isnan(none["mean"]) and none["reason"] == "no runs"
    const = stats.cell_summary([5.0, 5.0, 5.0])
    assert const["std"] == 0 and const["ci_t_low"] == const["ci_boot_high"] == 5.0


# --- paired_comparison ------------------------------------------------------------------------

def test_paired_comparison_matches_scipy():
    c = stats.paired_comparison(X, B)
    d = X - B
    assert c["n_pairs"] == 7 and c["mean_diff"] == pytest.approx(d.mean())
    lo, hi = sps.t.interval(0.95, df=6, loc=d.mean(), scale=sps.sem(d))
    assert (c["diff_ci_low"], c["diff_ci_high"]) == pytest.approx((lo, hi))
    t = sps.ttest_rel(X, B)
    assert c["t_stat"] == pytest.approx(t.statistic) and c["p_ttest"] == pytest.approx(t.pvalue)
    w = sps.wilcoxon(X, B, zero_method="wilcox", method="auto")
    assert c["p_wilcoxon"] == pytest.approx(w.pvalue) and c["w_stat"] == pytest.approx(w.statistic)
    assert c["wilcoxon_method"] == "exact"
    assert c["effect_size_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert c["prob_improvement"] == pytest.approx(np.mean(d < 0))


def test_wilcoxon_exact_hand_case_reaches_min_p():
    # five pairs, every difference negative and distinct: exact two-sided p = 2/2^5
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    c = stats.paired_comparison(x, x + np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert c["p_wilcoxon"] == pytest.approx(0.0625) == pytest.approx(stats.min_p_wilcoxon(5))
    assert c["w_stat"] == 0 and c["prob_improvement"] == 1.0


def test_probability_of_improvement_counts_ties_half_and_respects_direction():
    x, base = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]  # win, tie, loss, loss (lower better)
    assert stats.paired_comparison(x, base)["prob_improvement"] == pytest.approx(1.5 / 4)
    up = stats.paired_comparison(x, base, higher_is_better=True)
    assert up["prob_improvement"] == pytest.approx(2.5 / 4)


def test_zero_differences_and_edge_cases():
    same = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p_wilcoxon"] == 1.0 and math.isnan(same["p_ttest"])
    assert same["prob_improvement"] == 0.5 and "zero" in same["reason"]
    # zeros are discarded (zero_method="wilcox"), as scipy does
    x, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), np.array([1.0, 2.5, 3.7, 4.2, 5.9, 6.3])
    c = stats.paired_comparison(x, b)
    assert c["p_wilcoxon"] == pytest.approx(sps.wilcoxon(x, b, zero_method="wilcox").pvalue)
    assert "ties/zeros" in c["wilcoxon_method"]
    one = stats.paired_comparison([1.0], [2.0])
    assert one["n_pairs"] == 1 and math.isnan(one["p_wilcoxon"]) and one["mean_diff"] == -1.0
    with pytest.raises(ValueError, match="aligned by seed"):
        stats.paired_comparison([1.0, 2.0], [1.0])


@pytest.mark.parametrize("n, expected", [(3, 0.25), (4, 0.125), (5, 0.0625), (6, 0.031),
                                         (7, 0.016), (8, 0.0078), (9, 0.0039), (10, 0.0020)])
def test_min_p_wilcoxon_matches_statistics_md(n, expected):
    assert stats.min_p_wilcoxon(n) == pytest.approx(expected, rel=0.03)
    # the exact test really reaches it: all n differences of one sign
    x = np.arange(1.0, n + 1)
    assert sps.wilcoxon(x, np.zeros(n), method="exact").pvalue == pytest.approx(
        stats.min_p_wilcoxon(n))


def test_can_reach_significance_under_holm_over_8_needs_n_9():
    kw = {"alpha": 0.05, "family_size": 8}
    rng = np.random.default_rng(1)
    for n, ok in [(3, False), (8, False), (9, True), (10, True)]:
        x = rng.normal(size=n)
        assert stats.paired_comparison(x, x + rng.uniform(1, 2, n), **kw)[
            "can_reach_significance"] is ok
    assert stats.paired_comparison(X[:5], B[:5])["can_reach_significance"] is False  # 0.0625
    assert stats.paired_comparison(X[:6], B[:6])["can_reach_significance"] is True  # 0.031


# --- holm, ranks, friedman, noise -------------------------------------------------------------

def test_holm_matches_statsmodels_and_hand_case():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    reject, adj = stats.holm(p)
    ref = multipletests(p, alpha=0.05, method="holm")
    np.testing.assert_allclose(adj, ref[1])
    np.testing.assert_array_equal(reject, ref[0])
    _, small = stats.holm([0.01, 0.04, 0.03])
    np.testing.assert_allclose(small, [0.03, 0.06, 0.06])  # 3*0.01, max(2*0.03, .03), 1*0.04->.06


def test_holm_leaves_nan_out_of_the_family():
    reject, adj = stats.holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(adj[[0, 2]], [0.02, 0.04])
    assert math.isnan(adj[1]) and not reject[1] and reject[0] and reject[2]


def test_average_ranks_hand_case_with_ties():
    table = pd.DataFrame({"c1": [5.0, 4.0, 6.0], "c2": [3.0, 3.0, 1.0]},
                         index=["weight_decay", "mhe", "so"])
    ranks = stats.average_ranks(table)
    # c1: mhe 1, wd 2, so 3; c2: so 1, wd/mhe tie 2.5
    assert ranks.to_dict() == {"mhe": 1.75, "so": 2.0, "weight_decay": 2.25}
    assert list(ranks.index) == ["mhe", "so", "weight_decay"]
    hi = stats.average_ranks(table, higher_is_better=True)
    assert hi["so"] == pytest.approx(2.0) and hi["weight_decay"] == pytest.approx(1.75)


def test_friedman_matches_scipy_and_needs_enough_data():
    rng = np.random.default_rng(3)
    table = pd.DataFrame(rng.normal(size=(4, 6)), index=list("abcd"))
    res = stats.friedman(table)
    ref = sps.friedmanchisquare(*table.to_numpy())
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["pvalue"] == pytest.approx(ref.pvalue)
    assert (res["n_labels"], res["n_cells"]) == (4, 6)
    table.iloc[0, 0] = np.nan  # incomplete block dropped
    assert stats.friedman(table)["n_cells"] == 5
    short = stats.friedman(table.iloc[:2])
    assert math.isnan(short["pvalue"]) and ">= 3 labels" in short["reason"]


def test_binomial_noise_floor_values_from_statistics_md():
    assert stats.binomial_noise_floor(94, 10_000) == pytest.approx(0.2375, abs=1e-4)
    assert stats.binomial_noise_floor(75, 10_000) == pytest.approx(0.4330, abs=1e-4)
    np.testing.assert_allclose(stats.binomial_noise_floor(np.array([50.0]), 100), [5.0])


# --- compare_to_baseline ----------------------------------------------------------------------

def test_compare_to_baseline_tidy_output_matches_direct_tests():
    runs = make_runs(seeds=range(6), cells=(("cifar10", "cnn9"), ("cifar100", "cnn9")))
    out = stats.compare_to_baseline(runs)
    assert len(out) == 6 and set(out["label"]) == {"weight_decay", "mhe", "rp_comhe"}
    cell = runs[(runs.dataset == "cifar100")]
    base = cell[cell.label == "weight_decay"].set_index("seed")["test_error"]
    ps = []
    for lab in ("mhe", "rp_comhe"):
        x = cell[cell.label == lab].set_index("seed")["test_error"].loc[base.index]
        row = out[(out.dataset == "cifar100") & (out.label == lab)].iloc[0]
        assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(x, base).pvalue)
        assert row["p_ttest"] == pytest.approx(sps.ttest_rel(x, base).pvalue)
        assert row["mean"] == pytest.approx(x.mean()) and row["n_pairs"] == 6
        ps.append(row["p_wilcoxon"])
    adj = multipletests(ps, method="holm")[1]
    got = out[(out.dataset == "cifar100") & ~out.is_baseline].set_index("label")
    assert got.loc[["mhe", "rp_comhe"], "p_wilcoxon_holm"].to_numpy() == pytest.approx(adj)
    b = out[out.is_baseline].iloc[0]
    assert math.isnan(b["p_wilcoxon"]) and b["reason"] == "baseline row"
    assert (out["family_size"] == 2).all()
    assert out["noise_floor"].between(0.4, 0.45).sum() == 3  # cifar100 ~75% accuracy rows


def test_compare_to_baseline_pairs_only_shared_seeds():
    runs = make_runs(seeds=range(5))
    runs = runs[~((runs.label == "mhe") & (runs.seed == 4))]
    runs = runs[~((runs.label == "weight_decay") & (runs.seed == 0))]
    out = stats.compare_to_baseline(runs).set_index("label")
    assert out.loc["mhe", "n"] == 4 and out.loc["mhe", "n_pairs"] == 3
    assert out.loc["rp_comhe", "n_pairs"] == 4 and out.loc["weight_decay", "n"] == 4


def test_compare_to_baseline_filters_status_and_synthetic():
    runs = make_runs()
    runs.loc[runs.index[:2], "status"] = "diverged"
    out = stats.compare_to_baseline(runs).set_index("label")
    assert out.loc["weight_decay", "n"] == 3
    synth = make_runs(synthetic=True)
    assert stats.compare_to_baseline(synth).empty
    marked = stats.compare_to_baseline(synth, include_synthetic=True)
    assert len(marked) == 3 and marked["synthetic"].all()


def test_compare_to_baseline_without_baseline_and_accuracy_direction():
    runs = make_runs(labels=("mhe", "rp_comhe"))
    out = stats.compare_to_baseline(runs)
    assert out["p_wilcoxon"].isna().all() and out["reason"].str.contains("no 'weight_decay'").all()
    acc = stats.compare_to_baseline(make_runs(), metric="test_acc").set_index("label")
    assert acc.loc["rp_comhe", "prob_improvement"] == 1.0  # higher accuracy wins
    assert acc.loc["rp_comhe", "mean_diff"] > 0


def test_holm_skips_statsmodels_gc_collect_and_restores_it():
    import gc

    original = gc.collect
    calls = []
    try:
        gc.collect = lambda *a, **k: calls.append(1) or 0
        stats.holm([0.01, 0.02])
        assert calls == []  # statsmodels' full collection was skipped
    finally:
        restored = gc.collect
        gc.collect = original
    assert restored is not original and restored.__name__ == "<lambda>"  # our spy came back


def test_baseline_found_by_regularizer_name_when_displayed_under_another_label():
    """Suites display weight_decay as "Baseline": pairing must still find it."""
    rows = [{"dataset": "d", "model": "m", "label": lab, "regularizer": reg, "seed": s,
             "status": "complete", "synthetic": False, "n_test": 1000,
             "test_error": 10.0 + (1.0 if reg == "so" else 0.0) + 0.1 * s}
            for reg, lab in (("weight_decay", "Baseline"), ("so", "SO")) for s in range(4)]
    out = stats.compare_to_baseline(pd.DataFrame(rows), baseline="weight_decay")
    so = out[out["label"] == "SO"].iloc[0]
    assert bool(out[out["label"] == "Baseline"]["is_baseline"].iloc[0])
    assert so["n_pairs"] == 4 and so["mean_diff"] == pytest.approx(1.0)
