"""Figures: interval plots of final test error, training dynamics over iterations.

matplotlib with the Agg backend (no display); each figure is saved as PNG and PDF, atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, GPU machines, nox sessions
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["FORMATS", "plot_intervals", "plot_training_dynamics"]

FORMATS = ("png", "pdf")


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (temp file + os.replace) and close it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_name(f"{stem.name}.{fmt}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            # No creation date in the PDF: regenerating from the same records gives the same bytes.
            meta = {"CreationDate": None} if fmt == "pdf" else {}
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    plt.close(fig)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def plot_intervals(stats_df: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Mean and 95% t CI of each label's final metric, one panel per (dataset, model) cell.

    Args:
        stats_df: tidy output of :func:`benchmark.stats.compare_to_baseline` (columns
            ``dataset, model, label, n, mean, ci_t_low, ci_t_high, is_baseline, synthetic,
            metric``).
        out_stem: path without suffix; writes ``<stem>.png`` and ``<stem>.pdf``.
    Returns:
        the written paths.
    """
    cells = list(stats_df.groupby(["dataset", "model"], sort=True))
    metric = str(stats_df["metric"].iloc[0]) if len(stats_df) else "test_error"
    fig, axes = plt.subplots(1, max(len(cells), 1), squeeze=False,
                             figsize=(4.2 * max(len(cells), 1), 0.45 * stats_df["label"].nunique()
                                      + 1.6))
    for ax, ((dataset, model), cell) in zip(axes[0], cells, strict=False):
        cell = cell.sort_values("mean", ascending=False, na_position="first")
        y = np.arange(len(cell))
        mean = cell["mean"].to_numpy(float)
        lo = np.nan_to_num(mean - cell["ci_t_low"].to_numpy(float))
        hi = np.nan_to_num(cell["ci_t_high"].to_numpy(float) - mean)
        colors = ["black" if b else "tab:blue" for b in cell["is_baseline"]]
        for yi, m, low, high, c in zip(y, mean, lo, hi, colors, strict=True):
            ax.errorbar(m, yi, xerr=[[low], [high]], fmt="none", ecolor=c, capsize=3)
        ax.scatter(mean, y, c=colors, zorder=3, s=18)
        base = cell.loc[cell["is_baseline"], "mean"]
        if len(base) and np.isfinite(base.iloc[0]):
            ax.axvline(base.iloc[0], color="grey", lw=0.8, ls="--")
        names = zip(cell["label"], cell["n"], strict=True)
        ax.set_yticks(y, [f"{lab} (n={n})" for lab, n in names])
        synthetic = " [SYNTHETIC]" if cell["synthetic"].any() else ""
        ax.set_title(f"{dataset} / {model}{synthetic}", fontsize=9)
        ax.set_xlabel(f"final {metric} (%), mean and 95% t CI over seeds")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out_stem))


def _band(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and seed count of ``column`` per (label, iteration)."""
    g = curves.dropna(subset=[column]).groupby(["label", "iteration"])[column]
    return g.agg(["mean", "std", "count"]).reset_index()


def plot_training_dynamics(curves_df: pd.DataFrame, out_dir: str | Path, *,
                           prefix: str = "dynamics", synthetic: bool = False) -> list[Path]:
    """Test error and total hyperspherical energy against iteration, per (dataset, model).

    Mean over seeds per label with a band of ± one standard deviation across seeds (no band at
    n=1), like Figure 1(c) of the CoMHE paper.

    Args:
        curves_df: the store's long ``curves`` table (columns ``dataset, model, label, seed,
            iteration, test_error, energy_total``), one row per (run, evaluation).
        out_dir: writes ``<prefix>_<dataset>_<model>.png`` and ``.pdf`` there.
        synthetic: mark the titles as SYNTHETIC (smoke runs on synthetic data).
    Returns:
        the written paths.
    """
    paths: list[Path] = []
    for (dataset, model), cell in curves_df.groupby(["dataset", "model"], sort=True):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, column, ylabel in ((axes[0], "test_error", "test error (%)"),
                                   (axes[1], "energy_total", "total hyperspherical energy")):
            band = _band(cell, column) if column in cell else pd.DataFrame()
            for label, b in (band.groupby("label", sort=True) if len(band) else []):
                x, m = b["iteration"].to_numpy(float), b["mean"].to_numpy(float)
                line, = ax.plot(x, m, label=f"{label} (n={int(b['count'].max())})", lw=1.2)
                sd = b["std"].to_numpy(float)
                if np.isfinite(sd).any():
                    ax.fill_between(x, m - np.nan_to_num(sd), m + np.nan_to_num(sd),
                                    color=line.get_color(), alpha=0.2, lw=0)
            if not len(band):
                ax.text(0.5, 0.5, f"no {column} values", ha="center", transform=ax.transAxes)
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        handles, _labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[0].legend(fontsize=7)
        mark = " [SYNTHETIC]" if synthetic else ""
        fig.suptitle(f"{dataset} / {model}{mark}: mean ± 1 sd over seeds", fontsize=10)
        fig.tight_layout()
        paths += _save(fig, Path(out_dir) / _slug(f"{prefix}_{dataset}_{model}"))
    return paths
