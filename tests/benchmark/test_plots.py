"""benchmark.analysis.plots: interval and training-dynamics figures from a synthetic results store."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PathCollection

from benchmark.analysis import cells, plots
from tests.benchmark.test_report import CELLS, LABELS, make_store


@pytest.fixture
def captured(monkeypatch):
    """Keep each figure open (and its file stem) instead of writing it."""
    figs = []

    def fake_save(fig, stem):
        figs.append((fig, stem))
        return [stem]

    monkeypatch.setattr(plots, "_save", fake_save)
    yield figs
    for fig, _ in figs:
        matplotlib.pyplot.close(fig)


def test_backend_is_agg_even_when_the_environment_asks_for_another():
    """Importing benchmark.analysis.plots must select Agg itself (MPLBACKEND=pdf would win otherwise)."""
    code = "import benchmark.analysis.plots, matplotlib; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "pdf"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.lower() == "agg"


def test_interval_plot_writes_png_and_pdf(tmp_path):
    runs, _ = make_store(cells=CELLS[:1], seeds=range(3))
    table = cells.compare_to_baseline(runs)
    paths = plots.plot_intervals(table, tmp_path / "intervals")
    assert [p.name for p in paths] == ["intervals.png", "intervals.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*.tmp"))


def test_interval_plot_panels_seed_points_setup_and_no_impossible_values(captured):
    runs, _ = make_store(seeds=range(3))
    runs.loc[(runs.label == "so") & (runs.seed == 0), "test_error"] = 99.0  # wide interval
    table = cells.compare_to_baseline(runs)
    plots.plot_intervals(table, "unused", setups={("cifar100", "cnn9"): "protocol p (x)"})
    (fig, _), = captured
    axes = fig.get_axes()
    assert axes[1].get_title() == "cifar100 / cnn9\nprotocol p (x)"
    ticks = [t.get_text() for t in axes[1].get_yticklabels()]
    assert ticks == [f"{lab} (3 complete)" for lab in reversed(LABELS)]  # baseline on top
    points = [c for c in axes[1].collections if isinstance(c, PathCollection)]
    xs = np.concatenate([c.get_offsets()[:, 0] for c in points])
    col = table[table.dataset == "cifar100"]
    seeds = np.concatenate(col["values"].to_list())
    assert np.isin(np.round(seeds, 9), np.round(xs, 9)).all()  # every seed is drawn
    for ax in axes:
        lo, hi = ax.get_xlim()
        assert 0.0 <= lo and hi <= 100.0


def test_one_colour_per_method_in_every_figure(captured):
    runs, curves = make_store(cells=CELLS[:1], seeds=range(3))
    table = cells.compare_to_baseline(runs)
    colors = plots.method_colors(list(table["label"]))
    plots.plot_intervals(table, "a", colors=colors)
    plots.plot_training_dynamics(curves, "b", order=list(table["label"]), colors=colors)
    (fig_i, _), (fig_d, _) = captured
    line_colors = {line.get_label().split(" (")[0]: matplotlib.colors.to_rgba(line.get_color())
                   for line in fig_d.get_axes()[0].get_lines()
                   if not line.get_label().startswith("_")}
    assert line_colors == {lab: colors[lab] for lab in LABELS}
    dots = {tuple(np.round(c.get_facecolor()[0][:3], 6)) for c in fig_i.get_axes()[0].collections
            if isinstance(c, PathCollection)}
    assert dots == {tuple(np.round(colors[lab][:3], 6)) for lab in LABELS}
    assert len(set(colors.values())) == len(LABELS)


def test_training_dynamics_files_per_cell(tmp_path):
    _, curves = make_store(labels=LABELS[:2], seeds=range(2))
    curves = curves[curves.dataset == "cifar10"]
    paths = plots.plot_training_dynamics(curves, tmp_path, prefix="dyn")
    assert [p.name for p in paths] == ["dyn_cifar10_cnn9.png", "dyn_cifar10_cnn9.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_training_dynamics_mean_and_bounded_band_over_seeds(captured):
    _, curves = make_store(cells=CELLS[1:], seeds=range(6))
    curves.loc[curves.seed == 0, "test_error"] = 0.5  # a band that would reach below 0
    plots.plot_training_dynamics(curves, "out", synthetic=True)
    (fig, stem), = captured
    assert stem.name == "dynamics_cifar100_cnn9"
    err_ax, energy_ax = fig.get_axes()
    assert "SYNTHETIC" in fig._suptitle.get_text()
    lines = {line.get_label(): line for line in err_ax.get_lines()}
    assert set(lines) == {f"{lab} (n=6)" for lab in LABELS}
    wd = curves[curves.label == "weight_decay"].groupby("iteration")["test_error"].mean()
    np.testing.assert_allclose(lines["weight_decay (n=6)"].get_ydata(), wd.to_numpy())
    assert len(err_ax.collections) == len(LABELS)  # one ± sd band per label
    for band in err_ax.collections:
        ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        assert ys.min() >= 0.0 and ys.max() <= 100.0


def test_training_dynamics_draws_every_run_at_small_n(captured):
    _, curves = make_store(cells=CELLS[1:], seeds=range(3))
    plots.plot_training_dynamics(curves, "out")
    (fig, _), = captured
    err_ax = fig.get_axes()[0]
    assert len(err_ax.get_lines()) == len(LABELS) * (1 + 3) and not err_ax.collections
    run = curves[(curves.label == "so") & (curves.seed == 1)]
    assert any(np.allclose(line.get_ydata(), run["test_error"]) for line in err_ax.get_lines())


def test_dollar_labels_render_literally(tmp_path):
    runs, curves = make_store(cells=CELLS[:1], seeds=range(2), labels=("weight_decay", "mhe"))
    runs["label"] = runs["label"].replace({"mhe": "$\\alpha_{"})
    curves["label"] = curves["label"].replace({"mhe": "$\\alpha_{"})
    table = cells.compare_to_baseline(runs)
    assert plots.plot_intervals(table, tmp_path / "i")
    assert plots.plot_training_dynamics(curves, tmp_path)
    assert plots.mpl_escape("$a$") == r"\$a\$"
