"""Across cells: a mixed model with Holm contrasts, or Friedman with enough cells.

With fewer cells than methods, Friedman's chi-square p cannot get small (2 cells, 9 methods:
never below 0.042) and ignores seed variation. The mixed model
``metric ~ method + cell + (1 | cell:seed)`` (statsmodels MixedLM, REML) uses every run: the
method coefficients are the differences from the baseline, tested by Wald z and Holm-corrected.
Beside it, the per-seed paired differences pooled over cells.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from benchmark import stats

__all__ = ["across_cells", "friedman", "mixed_model", "pooled_paired_differences"]


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


def mixed_model(runs: pd.DataFrame, baseline: str, metric: str = "test_error",
                alpha: float = 0.05) -> dict[str, Any]:
    """Fit ``metric ~ method + cell + (1 | cell:seed)`` on counted runs.

    Args:
        runs: one row per counted run with ``label, dataset, model, seed`` and ``metric``.
    Returns:
        dict with ``contrasts`` (DataFrame: label, estimate (difference from the baseline),
        se, p, p_holm, significant), ``converged`` and ``reason`` (None when fitted).
    """
    import statsmodels.api as sm

    out: dict[str, Any] = {"contrasts": pd.DataFrame(), "converged": False, "reason": None}
    df = runs.dropna(subset=[metric]).copy()
    df["cell"] = df["dataset"].astype(str) + " / " + df["model"].astype(str)
    labels = [lab for lab in dict.fromkeys(df["label"].astype(str)) if lab != baseline]
    if baseline not in set(df["label"].astype(str)) or not labels:
        out["reason"] = f"needs '{baseline}' and at least one other label"
        return out
    cells = sorted(df["cell"].unique())
    exog = pd.DataFrame({"intercept": 1.0}, index=df.index)
    for i, lab in enumerate(labels):
        exog[f"m{i}"] = (df["label"].astype(str) == lab).astype(float)
    for j, c in enumerate(cells[1:]):
        exog[f"c{j}"] = (df["cell"] == c).astype(float)
    groups = df["cell"] + "#" + df["seed"].astype(str)
    if groups.nunique() < 3 or len(df) <= exog.shape[1] + 1:
        out["reason"] = "too few runs for the model"
        return out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = sm.MixedLM(df[metric].astype(float).reset_index(drop=True),
                             exog.reset_index(drop=True),
                             groups=groups.to_numpy()).fit(reml=True)
        except (ValueError, np.linalg.LinAlgError) as exc:
            out["reason"] = f"fit failed ({exc})"
            return out
    out["converged"] = bool(getattr(fit, "converged", True)) and not any(
        "converge" in str(w.message).lower() for w in caught)
    est = np.asarray(fit.fe_params)[1:1 + len(labels)]
    se = np.asarray(fit.bse_fe)[1:1 + len(labels)]
    p = 2 * sps.norm.sf(np.abs(est / se))
    reject, adj = stats.holm(p, alpha)
    out["contrasts"] = pd.DataFrame({"label": labels, "estimate": est, "se": se, "p": p,
                                     "p_holm": adj, "significant": reject})
    return out


def pooled_paired_differences(table: pd.DataFrame) -> pd.DataFrame:
    """Per label: its per-seed paired differences from the baseline pooled over cells (from
    the tidy table): number of pairs, their mean, and the paired win rate over all of them."""
    rows = []
    for label, grp in table[~table["is_baseline"].astype(bool)].groupby("label", sort=False):
        grp = grp[grp["n_pairs"].fillna(0) > 0]
        n = int(grp["n_pairs"].sum())
        mean = float((grp["mean_diff"] * grp["n_pairs"]).sum() / n) if n else np.nan
        wins = float((grp["win_rate"] * grp["n_pairs"]).sum() / n) if n else np.nan
        rows.append({"label": label, "pairs": n, "mean_diff": mean, "win_rate": wins})
    return pd.DataFrame(rows, columns=["label", "pairs", "mean_diff", "win_rate"])


def across_cells(table: pd.DataFrame, runs: pd.DataFrame, baseline: str, metric: str,
                 alpha: float = 0.05) -> dict[str, Any]:
    """The across-cell analysis the data supports: None with one cell, the mixed model with
    fewer cells than methods, else Friedman on the cell means. Also the pooled differences."""
    n_cells = table[["dataset", "model"]].drop_duplicates().shape[0]
    n_labels = table["label"].nunique()
    base = table.loc[table["is_baseline"].astype(bool), "label"]
    base_label = str(base.iloc[0]) if len(base) else baseline
    out: dict[str, Any] = {"n_cells": n_cells, "n_labels": n_labels,
                           "pooled": pooled_paired_differences(table)}
    if n_cells < 2:
        out.update(kind="none", reason="one cell: nothing to compare across cells")
    elif n_cells < n_labels:
        out.update(kind="mixed", **mixed_model(runs, base_label, metric, alpha))
    else:
        means = table.pivot_table(index="label", columns=["dataset", "model"], values="mean")
        out.update(kind="friedman", **friedman(means))
    return out
