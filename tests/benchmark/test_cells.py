"""Cells: a table never pools different set-ups, counts every run, and tests over the whole
table (issue 13 "pooling", "stuck runs"; issue 18 H1 "diverged runs vanish")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.analysis import cells, stats
from benchmark.analysis.store import classify_outcome


def runs_table(labels=("weight_decay", "mhe", "rp_comhe"), seeds=range(4),
               cell_list=(("cifar10", "cnn9"),), shift=None, sd=0.2, seed=0, **setup):
    """A ``runs`` table with the set-up columns of the store (one set-up unless overridden)."""
    rng = np.random.default_rng(seed)
    shift = shift or {"weight_decay": 0.0, "mhe": -1.0, "rp_comhe": -2.0}
    rows = []
    for ds, model in cell_list:
        for lab in labels:
            for s in seeds:
                err = round(6.0 + shift.get(lab, 0.0) + rng.normal(0, sd), 2)
                rows.append({
                    "run_id": f"{ds}-{model}-{lab}-{s}", "suite": "t", "label": lab,
                    "regularizer": lab, "dataset": ds, "model": model, "seed": s,
                    "status": "complete", "outcome": "complete", "reason": None,
                    "test_error": err, "test_acc": 100 - err, "n_test": 10_000,
                    "synthetic": False, "iterations": 200, "final_iteration": 200,
                    "protocol": "cpu_quick", "protocol_hash": "aaaa", "model_kwargs": "{}",
                    "code": "1111111", "git_commit": "1111111", "packed_seeds": 1,
                    "dtype": "torch.float32", "threads": pd.NA, "world_size": "1",
                    "device_type": "cpu",
                    "regularizer_source": None,
                    "correct": None, **setup})
    return pd.DataFrame(rows)


def test_a_different_protocol_in_a_cell_is_refused_with_its_filter():
    """Two smoke runs at another width became the baseline of a cpu_quick cell (issue 13)."""
    runs = runs_table()
    smoke = runs_table(labels=("weight_decay",), seeds=range(2), protocol="smoke",
                       protocol_hash="bbbb", model_kwargs='{"width": 0.5}')
    with pytest.raises(cells.SetupError) as err:
        cells.compare_to_baseline(pd.concat([runs, smoke]))
    msg = str(err.value)
    assert "\n" not in msg and "model_kwargs" in msg and "--where" in msg
    runs2 = pd.concat([runs, runs_table(labels=("mhe",), seeds=[9], protocol_hash="bbbb")])
    with pytest.raises(cells.SetupError, match=r"protocol_hash.*--protocol"):
        cells.compare_to_baseline(runs2)


@pytest.mark.parametrize("field, value", [("packed_seeds", 2), ("dtype", "torch.bfloat16"),
                                          ("threads", 1), ("world_size", "2"),
                                          ("device_type", "cuda")])
def test_numerics_that_change_results_are_not_pooled(field, value):
    runs = runs_table(threads=2)
    other = runs_table(labels=("mhe",), seeds=[7], **{"threads": 2, field: value})
    with pytest.raises(cells.SetupError, match=f"{field}.*--where {field}="):
        cells.compare_to_baseline(pd.concat([runs, other]))


def test_mixed_commits_refused_unless_allowed():
    runs = runs_table()
    runs.loc[runs["seed"] == 1, "code"] = "2222222"
    with pytest.raises(cells.SetupError, match="--commit PREFIX.*--allow-mixed-code"):
        cells.compare_to_baseline(runs)
    table = cells.compare_to_baseline(runs, allow_mixed_code=True)
    assert set(table["code"]) == {"1111111, 2222222"}


def test_stale_plugin_source_is_not_pooled():
    runs = runs_table(regularizer_source="s1")
    old = runs_table(labels=("mhe",), seeds=[8], regularizer_source="s0")
    with pytest.raises(cells.SetupError, match="stale"):
        cells.compare_to_baseline(pd.concat([runs, old]))


def test_stuck_run_at_the_loss_ceiling_is_flagged_counted_and_left_out():
    """A run at 70% error with its train loss at the softmax-epsilon ceiling was 'complete'
    and entered the mean (issue 13)."""
    final = {"test_acc": 30.0, "train_loss": 8.9, "n_test": 360}
    outcome, why = classify_outcome("complete", final, 1e-4, "digits")
    assert outcome == "stuck" and "ceiling" in why
    chance = classify_outcome("complete", {"test_acc": 10.5, "train_loss": 2.3, "n_test": 10000},
                              1e-4, "cifar10")
    assert chance[0] == "stuck" and "chance" in chance[1]
    assert classify_outcome("complete", {"test_acc": 75.0, "train_loss": 0.9, "n_test": 10000},
                            1e-4, "cifar100")[0] == "complete"
    assert classify_outcome("diverged", {}, 1e-4, "cifar10")[0] == "diverged"
    runs = runs_table()
    stuck = (runs["label"] == "mhe") & (runs["seed"] == 0)
    runs.loc[stuck, ["outcome", "test_error"]] = ["stuck", 70.0]
    row = cells.compare_to_baseline(runs).set_index("label").loc["mhe"]
    assert row["n"] == 3 and row["n_stuck"] == 1 and row["mean"] < 10
    assert "1 stuck" in row["outcomes"]
    asked = cells.compare_to_baseline(runs, include_stuck=True).set_index("label").loc["mhe"]
    assert asked["n"] == 4 and asked["mean"] > 20


def test_method_that_always_diverges_still_gets_a_row():
    """A suite with `hs_mhe strength: 1e30`: 0 mentions in table and leaderboard (issue 18)."""
    runs = runs_table()
    dead = runs_table(labels=("hs_mhe",))
    dead["outcome"] = dead["status"] = "diverged"
    dead["final_iteration"] = [12, 15, 20, 12]
    failed = runs_table(labels=("so",), seeds=[0])
    failed["outcome"] = failed["status"] = "failed"
    table = cells.compare_to_baseline(pd.concat([runs, dead, failed])).set_index("label")
    row = table.loc["hs_mhe"]
    assert row["n"] == 0 and row["n_diverged"] == 4 and row["diverged_at"] == [12, 12, 15, 20]
    assert "4 diverged (at iteration 12, 12, 15, 20)" == row["outcomes"]
    assert table.loc["so", "n_failed"] == 1 and table.loc["so", "n"] == 0


def test_holm_runs_over_the_whole_table_and_rows_follow_the_declared_order():
    runs = runs_table(cell_list=(("cifar10", "cnn9"), ("cifar100", "cnn9")))
    table = cells.compare_to_baseline(runs, declared=["weight_decay", "rp_comhe", "mhe"])
    assert list(table["label"][:3]) == ["weight_decay", "rp_comhe", "mhe"]
    tested = table[~table["is_baseline"]]
    assert (table["family_size"] == 4).all()
    expected = stats.holm(tested["p_ttest"].to_numpy())[1]
    assert tested["p_ttest_holm"].to_numpy() == pytest.approx(expected)
    assert (tested["mdd"] > 0).all() and tested["mdd"].nunique() == 2  # one per column


def test_baseline_first_even_when_displayed_under_another_label():
    runs = runs_table(labels=("so", "weight_decay"))
    runs["label"] = runs["regularizer"].map({"weight_decay": "Baseline", "so": "SO"})
    table = cells.compare_to_baseline(runs)
    assert list(table["label"]) == ["Baseline", "SO"] and table["is_baseline"].iloc[0]
    assert table["n_pairs"].iloc[1] == 4


def test_wilcoxon_column_uses_error_counts():
    runs = runs_table(labels=("weight_decay", "mhe"), seeds=range(6), shift={"mhe": 0.0})
    cx = np.array([301, 502, 703, 1004, 205, 406])
    cb = np.array([300, 503, 702, 1002, 208, 405])
    runs["n_test"] = 1000
    runs.loc[runs["label"] == "mhe", "test_error"] = cx / 1000 * 100
    runs.loc[runs["label"] == "weight_decay", "test_error"] = cb / 1000 * 100
    row = cells.compare_to_baseline(runs).set_index("label").loc["mhe"]
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon_exact(cx - cb)[1])
    assert row["p_wilcoxon"] == pytest.approx(0.78125)  # enumeration (test_stats)
