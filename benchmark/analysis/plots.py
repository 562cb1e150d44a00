"""Figures: interval plots of final test error, training dynamics over iterations, the tuning
stage's validation error against strength.

matplotlib with the Agg backend (no display); each figure is saved as PNG and PDF, atomically.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, GPU machines, nox sessions
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.records import atomic_write

__all__ = ["FORMATS", "method_colors", "mpl_escape", "plot_intervals", "plot_training_dynamics",
           "plot_tuning"]

FORMATS = ("png", "pdf")


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (atomically) and close it."""
    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        # No creation date in the PDF: regenerating from the same records gives the same bytes.
        meta = {"CreationDate": None} if fmt == "pdf" else {}
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(atomic_write(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()))
    plt.close(fig)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def mpl_escape(text: object) -> str:
    """``text`` shown literally by matplotlib (a ``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def method_colors(labels: list[str]) -> dict[str, tuple]:
    """One colour per label, the same in every figure of a report: the i-th label of the
    table's row order gets the i-th colour of tab10 (tab20 beyond 10 labels)."""
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(dict.fromkeys(labels))}


SEED_LINES_MAX = 5  # up to this many seeds the dynamics plot draws each run, not a band
_METRIC_NAMES = {"test_error": "test error (%)", "test_acc": "test accuracy (%)"}


def plot_intervals(stats_df: pd.DataFrame, out_stem: str | Path, *,
                   colors: dict[str, tuple] | None = None,
                   setups: dict[tuple, str] | None = None) -> list[Path]:
    """Per cell: each label's per-seed values (points), mean and 95% t interval (within 0-100).

    Args:
        stats_df: the tidy table of :func:`benchmark.analysis.cells.compare_to_baseline` (columns
            ``dataset, model, label, n, mean, ci_t_low, ci_t_high, values, is_baseline,
            synthetic, metric, outcomes``), rows in display order.
        colors: label -> colour (default :func:`method_colors` of the table's labels).
        setups: (dataset, model) -> set-up text for the panel title.
        out_stem: path without suffix; writes ``<stem>.png`` and ``<stem>.pdf``.
    Returns:
        the written paths.
    """
    cells = list(stats_df.groupby(["dataset", "model"], sort=True))
    metric = str(stats_df["metric"].iloc[0]) if len(stats_df) else "test_error"
    colors = colors or method_colors(list(stats_df["label"].astype(str)))
    n_rows = stats_df["label"].nunique()
    fig, axes = plt.subplots(1, max(len(cells), 1), squeeze=False,
                             figsize=(4.8 * max(len(cells), 1), 0.5 * n_rows + 1.8))
    for ax, ((dataset, model), cell) in zip(axes[0], cells, strict=False):
        cell = cell.iloc[::-1]  # first row at the top
        for yi, (_, r) in enumerate(cell.iterrows()):
            c = colors.get(str(r["label"]), "black")
            vals = np.asarray(r["values"] if isinstance(r["values"], list) else [], float)
            ax.scatter(vals, np.full(vals.size, yi) + np.linspace(-0.15, 0.15, vals.size),
                       s=10, color=c, alpha=0.6, lw=0, zorder=2)
            if np.isfinite(r["ci_t_low"]):
                ax.errorbar(r["mean"], yi, xerr=[[r["mean"] - r["ci_t_low"]],
                                                  [r["ci_t_high"] - r["mean"]]],
                            fmt="none", ecolor=c, capsize=3, lw=1.2)
            if np.isfinite(r["mean"]):
                ax.scatter([r["mean"]], [yi], color=c, marker="D", s=22, zorder=3)
        base = cell.loc[cell["is_baseline"].astype(bool), "mean"]
        if len(base) and np.isfinite(base.iloc[0]):
            ax.axvline(base.iloc[0], color="grey", lw=0.8, ls="--")
        ax.set_yticks(np.arange(len(cell)),
                      [mpl_escape(f"{r['label']} ({r['outcomes']})") for _, r in cell.iterrows()],
                      fontsize=7)
        synthetic = " [SYNTHETIC]" if cell["synthetic"].any() else ""
        setup = (setups or {}).get((dataset, model), "")
        ax.set_title(mpl_escape(f"{dataset} / {model}{synthetic}" + (f"\n{setup}" if setup
                                                                     else "")), fontsize=7)
        ax.set_xlabel(f"final {_METRIC_NAMES.get(metric, mpl_escape(metric))}: seeds (dots), "
                      "mean and 95% t CI", fontsize=8)
        lo, hi = ax.get_xlim()
        ax.set_xlim(max(lo, 0.0), min(hi, 100.0))
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out_stem))


def _band(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and seed count of ``column`` per (label, iteration)."""
    g = curves.dropna(subset=[column]).groupby(["label", "iteration"])[column]
    return g.agg(["mean", "std", "count"]).reset_index()


def plot_training_dynamics(curves_df: pd.DataFrame, out_dir: str | Path, *,
                           prefix: str = "dynamics", synthetic: bool = False,
                           order: list[str] | None = None,
                           colors: dict[str, tuple] | None = None,
                           setups: dict[tuple, str] | None = None) -> list[Path]:
    """Test error and total hyperspherical energy against iteration, per (dataset, model).

    Mean over seeds per label (thick line); with at most SEED_LINES_MAX seeds every run as a
    thin line of the same colour, with more a light band of ± one standard deviation clipped to
    the metric's range (error in [0, 100], energy >= 0).

    Args:
        curves_df: the store's long ``curves`` table (columns ``dataset, model, label, seed,
            iteration, test_error, energy_total``), one row per (run, evaluation).
        out_dir: writes ``<prefix>_<dataset>_<model>.png`` and ``.pdf`` there.
        synthetic: mark the titles as SYNTHETIC (smoke runs on synthetic data).
        order, colors: legend order and label -> colour (shared with the interval plot).
        setups: (dataset, model) -> set-up text for the title.
    Returns:
        the written paths.
    """
    paths: list[Path] = []
    labels = order or sorted(curves_df["label"].astype(str).unique())
    colors = colors or method_colors(labels)
    limits = {"test_error": (0.0, 100.0), "energy_total": (0.0, np.inf)}
    for (dataset, model), cell in curves_df.groupby(["dataset", "model"], sort=True):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, column, ylabel in ((axes[0], "test_error", "test error (%)"),
                                   (axes[1], "energy_total", "total hyperspherical energy")):
            band = _band(cell, column) if column in cell else pd.DataFrame()
            present = set(band["label"].astype(str)) if len(band) else set()
            for label in [lab for lab in labels if lab in present]:
                b = band[band["label"].astype(str) == label]
                x, m = b["iteration"].to_numpy(float), b["mean"].to_numpy(float)
                c = colors.get(label, "black")
                ax.plot(x, m, label=mpl_escape(f"{label} (n={int(b['count'].max())})"), lw=1.8,
                        color=c)
                if int(b["count"].max()) <= SEED_LINES_MAX:  # few seeds: show each one
                    for _, run in cell[cell["label"].astype(str) == label].groupby("seed"):
                        run = run.dropna(subset=[column]).sort_values("iteration")
                        ax.plot(run["iteration"], run[column], color=c, lw=0.6, alpha=0.35)
                    continue
                sd = b["std"].to_numpy(float)
                if np.isfinite(sd).any():
                    lo, hi = limits[column]
                    ax.fill_between(x, np.clip(m - np.nan_to_num(sd), lo, hi),
                                    np.clip(m + np.nan_to_num(sd), lo, hi), color=c, alpha=0.12,
                                    lw=0)
            if not len(band):
                ax.text(0.5, 0.5, f"no {column} values", ha="center", transform=ax.transAxes)
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        handles, _labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[0].legend(fontsize=7)
        mark = " [SYNTHETIC]" if synthetic else ""
        setup = (setups or {}).get((dataset, model), "")
        fig.suptitle(mpl_escape(f"{dataset} / {model}{mark}: mean over seeds (thin: each run; "
                                f"band: ± 1 sd above {SEED_LINES_MAX} seeds)"
                                + (f"\n{setup}" if setup else "")), fontsize=9)
        fig.tight_layout()
        paths += _save(fig, Path(out_dir) / _slug(f"{prefix}_{dataset}_{model}"))
    return paths


def tuning_plot_path(out_stem: str | Path, dataset: str, model: str) -> Path:
    """The PNG :func:`plot_tuning` writes for one (dataset, model) (a PDF beside it)."""
    return Path(f"{out_stem}_{_slug(dataset)}_{_slug(model)}.png")


def plot_tuning(choice: dict, out_stem: str | Path) -> list[Path]:
    """The tuning stage's validation curves, from a choice file's content (benchmark/tuning.py):
    one panel per method (their strengths live on different scales), validation error against
    the grid value on a log axis, each tuning seed a point, the mean a line, the chosen value a
    star; the y axis is shared so the methods compare. One figure per (dataset, model); returns
    the written paths (``<out_stem>_<dataset>_<model>.png`` and ``.pdf``)."""
    cells: dict[tuple, list[dict]] = {}
    for c in choice["choices"]:
        cells.setdefault((c["dataset"], c["model"]), []).append(c)
    paths = []
    colors = method_colors([c["label"] for c in choice["choices"]])
    for (dataset, model), methods in cells.items():
        cols = min(3, len(methods))
        rows = -(-len(methods) // cols)
        # constrained layout: a lower panel's title must not hide the upper one's x label
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), sharey=True,
                                 squeeze=False, layout="constrained")
        for ax, c in zip(axes.flat, methods):
            grid = sorted(c["grid"], key=lambda g: g["value"])
            x = [g["value"] for g in grid]
            for g in grid:
                errs = [e for e in g["val_error_by_seed"].values() if e is not None]
                ax.plot([g["value"]] * len(errs), errs, "o", ms=3, alpha=0.6, color=colors[c["label"]])
            means = [g["mean"] if g["mean"] is not None else np.nan for g in grid]
            ax.plot(x, means, "-", color=colors[c["label"]])
            if c["chosen"] is not None:
                ax.plot([c["chosen"]], [means[x.index(c["chosen"])]], "*", ms=12, color="black")
            ax.set_xscale("log")
            ax.set_title(mpl_escape(c["label"]), fontsize=9)
            ax.set_xlabel(mpl_escape(c["param"]), fontsize=8)
        for ax in axes[:, 0]:
            ax.set_ylabel("validation error (%)")
        for ax in list(axes.flat)[len(methods):]:
            ax.set_visible(False)
        fig.suptitle(mpl_escape(f"{choice['suite']}: {dataset}, {model}; "
                                f"{len(choice['seeds'])} tuning seeds (star: chosen)"), fontsize=9)
        paths += _save(fig, tuning_plot_path(out_stem, dataset, model).with_suffix(""))
    return paths
