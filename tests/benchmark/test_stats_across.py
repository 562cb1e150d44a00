"""Across cells: per-cell tests with Holm over all; Friedman only from 4 cells and >= labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.analysis import cells, stats_across
from tests.benchmark.test_cells import runs_table


def _across(runs):
    table = cells.compare_to_baseline(runs)
    return table, stats_across.across_cells(table, cells.select_runs(runs), "weight_decay",
                                            "test_error")


def test_two_cells_make_no_across_cell_claim_and_count_per_cell_results():
    runs = runs_table(cell_list=(("cifar10", "cnn9"), ("cifar100", "cnn9")), seeds=range(5))
    table, out = _across(runs)
    assert out["kind"] == "per-cell" and "too few" in out["reason"]
    assert "contrasts" not in out and "pooled" not in out  # no pooled model, no pooled points
    counts = out["counts"].set_index("label")
    tested = table[~table["is_baseline"]]
    for lab, grp in tested.groupby("label"):
        sig = grp[grp["sig_ttest"]]
        assert counts.loc[lab, "cells"] == 2
        assert counts.loc[lab, "better"] == int((sig["mean_diff"] < 0).sum())
        assert counts.loc[lab, "worse"] == int((sig["mean_diff"] > 0).sum())


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
    assert isinstance(out["counts"], pd.DataFrame) and out["counts"].empty
