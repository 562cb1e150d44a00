"""Across cells: per-cell paired tests with Holm over all, and an across-cell test only where
enough cells support one.

The analysis across cells IS the table's per-cell paired t-tests, Holm-corrected over every
comparison in every cell (:func:`benchmark.analysis.cells.compare_to_baseline`): each cell keeps its own
spread and scale, and Holm controls the family-wise error under any dependence between them.
No pooled model is fitted: a mixed model ``metric ~ method + cell + (1 | cell:seed)`` on raw
points over-rejected in simulation (family-wise error 0.071 with equal spreads, 0.090 with
unequal ones, at 2 cells x 6 labels x 3 seeds), failed to converge in 31-38 % of fits, and
pooled points across datasets of different scales. With 2 or 3 cells nothing is claimed across
cells; from ``MIN_CELLS`` cells with at least as many cells as labels, Friedman on the cell
means (rank-based, so scale-free).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["MIN_CELLS", "across_cells", "friedman", "per_label_counts"]

# Below this many cells no across-cell statement is made (the per-cell tests stand alone).
MIN_CELLS = 4


def friedman(means: pd.DataFrame) -> dict[str, Any]:
    """Friedman test (scipy) on a labels x cells table of means; complete cells only."""
    complete = means.dropna(axis=1, how="any")
    k, m = complete.shape
    out = {"test": "friedman", "statistic": np.nan, "pvalue": np.nan, "n_labels": int(k),
           "n_cells": int(m), "reason": None}
    if k < 3 or m < 2:
        out["reason"] = f"needs >= 3 labels and >= 2 complete cells (have {k} and {m})"
        return out
    res = sps.friedmanchisquare(*[complete.loc[lab].to_numpy(float) for lab in complete.index])
    out["statistic"], out["pvalue"] = float(res.statistic), float(res.pvalue)
    return out


def per_label_counts(table: pd.DataFrame, higher_is_better: bool = False) -> pd.DataFrame:
    """Per label, from the tidy table: the cells where it was tested against the baseline and
    how many of them the Holm-corrected paired t-test (over the whole table) found better or
    worse. Counts of per-cell results, not a pooled estimate."""
    rows = []
    for label, grp in table[~table["is_baseline"].astype(bool)].groupby("label", sort=False):
        tested = grp[grp["p_ttest"].notna()]
        sig = tested[tested["sig_ttest"].astype(bool)]
        better = (sig["mean_diff"] > 0) if higher_is_better else (sig["mean_diff"] < 0)
        rows.append({"label": label, "cells": int(len(tested)), "better": int(better.sum()),
                     "worse": int((~better).sum())})
    return pd.DataFrame(rows, columns=["label", "cells", "better", "worse"])


def across_cells(table: pd.DataFrame, runs: pd.DataFrame | None = None,
                 baseline: str = "weight_decay", metric: str = "test_error",
                 alpha: float = 0.05) -> dict[str, Any]:
    """The across-cell analysis the data supports.

    Returns:
        dict with ``n_cells, n_labels``, ``counts`` (:func:`per_label_counts`, empty with one
        cell), ``kind`` ("none": one cell; "per-cell": 2 to MIN_CELLS - 1 cells, or fewer cells
        than labels; "friedman") and ``reason`` (why no across-cell test), plus Friedman's
        fields. ``runs``, ``baseline`` and ``alpha`` are accepted for the caller's convenience;
        the per-cell tests already used them.
    """
    del runs, baseline, alpha  # the table's per-cell tests carry them
    n_cells = table[["dataset", "model"]].drop_duplicates().shape[0]
    n_labels = table["label"].nunique()
    out: dict[str, Any] = {"n_cells": n_cells, "n_labels": n_labels, "reason": None,
                           "counts": per_label_counts(table, "acc" in metric)
                           if n_cells > 1 else pd.DataFrame()}
    if n_cells < 2:
        out.update(kind="none", reason="one cell: nothing to compare across cells")
    elif n_cells < MIN_CELLS:
        out.update(kind="per-cell", reason=f"{n_cells} cells: too few for any across-cell claim")
    elif n_cells < n_labels:
        out.update(kind="per-cell", reason=f"fewer cells ({n_cells}) than labels ({n_labels}): "
                                           f"Friedman's p cannot get small")
    else:
        means = table.pivot_table(index="label", columns=["dataset", "model"], values="mean")
        out.update(kind="friedman", **friedman(means))
    return out
