"""Across cells: mixed model with Holm contrasts when cells < methods, Friedman otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark import cells, stats_across
from tests.benchmark.test_cells import runs_table


def _across(runs):
    table = cells.compare_to_baseline(runs)
    return table, stats_across.across_cells(table, cells.select_runs(runs), "weight_decay",
                                            "test_error")


def test_two_cells_and_three_methods_use_the_mixed_model():
    runs = runs_table(cell_list=(("cifar10", "cnn9"), ("cifar100", "cnn9")), seeds=range(5))
    table, out = _across(runs)
    assert out["kind"] == "mixed" and out["reason"] is None
    con = out["contrasts"].set_index("label")
    # Balanced design: the method coefficient is the mean of all its paired differences.
    pooled = out["pooled"].set_index("label")
    for lab in ("mhe", "rp_comhe"):
        assert con.loc[lab, "estimate"] == pytest.approx(pooled.loc[lab, "mean_diff"], abs=1e-6)
        assert pooled.loc[lab, "pairs"] == 10
    assert con.loc["rp_comhe", "estimate"] == pytest.approx(-2.0, abs=0.2)
    assert con["significant"].all() and (con["p_holm"] >= con["p"]).all()


def test_as_many_cells_as_methods_use_friedman_checked_by_hand():
    cl = tuple((f"d{i}", "cnn9") for i in range(4))
    runs = runs_table(cell_list=cl, seeds=range(2))
    table, out = _across(runs)
    assert out["kind"] == "friedman"
    means = table.pivot_table(index="label", columns="dataset", values="mean")
    ranks = means.rank(axis=0).sum(axis=1).to_numpy()
    n, k = means.shape[1], means.shape[0]
    chi2 = 12 / (n * k * (k + 1)) * np.sum(ranks ** 2) - 3 * n * (k + 1)
    assert out["statistic"] == pytest.approx(chi2)


def test_one_cell_computes_nothing_across_cells():
    _, out = _across(runs_table())
    assert out["kind"] == "none" and "one cell" in out["reason"]
    assert isinstance(out["pooled"], pd.DataFrame) and len(out["pooled"]) == 2
