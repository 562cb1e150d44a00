"""benchmark.plots: interval and training-dynamics figures from a synthetic results store."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PathCollection

from benchmark import plots, stats
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


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_interval_plot_writes_png_and_pdf(tmp_path):
    runs, _ = make_store(cells=CELLS[:1], seeds=range(3))
    table = stats.compare_to_baseline(runs)
    paths = plots.plot_intervals(table, tmp_path / "intervals")
    assert [p.name for p in paths] == ["intervals.png", "intervals.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*.tmp"))


def test_interval_plot_has_one_panel_per_cell_and_labelled_rows(captured):
    runs, _ = make_store(seeds=range(3))
    table = stats.compare_to_baseline(runs)
    plots.plot_intervals(table, "unused")
    (fig, _), = captured
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["cifar10 / cnn9", "cifar100 / cnn9"]
    ticks = [t.get_text() for t in axes[1].get_yticklabels()]
    assert sorted(ticks) == sorted(f"{lab} (n=3)" for lab in LABELS)
    assert ticks[-1].startswith("rp_comhe")  # best (lowest error) on top
    scatter, = [c for c in axes[1].collections if isinstance(c, PathCollection)]
    xs = scatter.get_offsets()[:, 0]
    means = table[table.dataset == "cifar100"]["mean"].to_numpy()
    np.testing.assert_allclose(sorted(xs), sorted(means))


def test_training_dynamics_files_per_cell(tmp_path):
    _, curves = make_store(labels=LABELS[:2], seeds=range(2))
    curves = curves[curves.dataset == "cifar10"]
    paths = plots.plot_training_dynamics(curves, tmp_path, prefix="dyn")
    assert [p.name for p in paths] == ["dyn_cifar10_cnn9.png", "dyn_cifar10_cnn9.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_training_dynamics_mean_and_band_over_seeds(captured):
    _, curves = make_store(cells=CELLS[1:], seeds=range(3))
    plots.plot_training_dynamics(curves, "out", synthetic=True)
    (fig, stem), = captured
    assert stem.name == "dynamics_cifar100_cnn9"
    err_ax, energy_ax = fig.get_axes()
    assert "SYNTHETIC" in fig._suptitle.get_text()
    assert energy_ax.get_ylabel() == "total hyperspherical energy"
    lines = {line.get_label(): line for line in err_ax.get_lines()}
    assert set(lines) == {f"{lab} (n=3)" for lab in LABELS}
    wd = curves[curves.label == "weight_decay"].groupby("iteration")["test_error"].mean()
    np.testing.assert_allclose(lines["weight_decay (n=3)"].get_ydata(), wd.to_numpy())
    np.testing.assert_allclose(lines["weight_decay (n=3)"].get_xdata(), [0, 250, 500])
    assert len(err_ax.collections) == len(LABELS)  # one ± sd band per label
    assert len(energy_ax.get_lines()) == len(LABELS)
