"""benchmark.analysis.report: tables, paper verdict, leaderboard, write_report on a synthetic store."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark.analysis import cells, report

LABELS = ("weight_decay", "so", "mhe", "rp_comhe")
CELLS = (("cifar10", "cnn9"), ("cifar100", "cnn9"))
SHIFT = {"weight_decay": 0.0, "so": -0.3, "mhe": -1.0, "rp_comhe": -2.0}


def make_store(labels=LABELS, cells=CELLS, seeds=range(5), shift=None, synthetic=False,
               iterations=75_000, sd=0.2, seed=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A synthetic results store (``runs``, ``curves``): one set-up per cell."""
    rng = np.random.default_rng(seed)
    shift = SHIFT if shift is None else shift
    runs, curves = [], []
    for ds, model in cells:
        base = {"cifar10": 6.0, "cifar100": 25.0}.get(ds, 30.0)
        for lab in labels:
            for s in seeds:
                err = base + shift.get(lab, 0.0) + rng.normal(0, sd)
                rid = hashlib.sha256(f"{ds}/{model}/{lab}/{s}".encode()).hexdigest()[:16]
                runs.append({
                    "schema_version": 1, "run_id": rid, "suite": "test", "label": lab,
                    "dataset": ds, "model": model, "regularizer": lab, "hparams": "{}",
                    "protocol": "paper_cifar", "iterations": iterations, "seed": s,
                    "status": "complete", "outcome": "complete", "reason": None,
                    "test_acc": 100 - err, "test_error": err, "train_loss": 0.1,
                    "penalty": 0.0, "n_test": 10_000, "wall_time_s": 10.0,
                    "median_step_ms": 5.0, "git_commit": "abc12340000", "code": "abc12340000",
                    "git_dirty": False, "device": "cpu (2 threads)", "torch_version": "2.14.1",
                    "synthetic": synthetic, "record_path": f"runs/{rid}.json",
                    "protocol_hash": "p1", "model_kwargs": "{}", "packed_seeds": 1,
                    "dtype": "torch.float32", "threads": None, "final_iteration": iterations,
                    "correct": None})
                for it in (0, 250, 500):
                    curves.append({
                        "run_id": rid, "label": lab, "dataset": ds, "model": model, "seed": s,
                        "iteration": it, "test_acc": 100 - err - 20 / (1 + it),
                        "test_error": err + 20 / (1 + it), "train_loss": 1.0, "penalty": 0.1,
                        "energy_total": 5.0 - it / 500 + rng.normal(0, .01)})
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_format_cell():
    assert report.format_cell(24.4123, 0.2071, 5) == "24.41 ± 0.21 (n=5)"
    assert report.format_cell(24.4, float("nan"), 1) == "24.40 (n=1)"
    assert report.format_cell(float("nan"), float("nan"), 0) == "–"


# --- tables -----------------------------------------------------------------------------------

def _tables(tmp_path, runs=None, **kw):
    runs = make_store(**kw)[0] if runs is None else runs
    table = cells.compare_to_baseline(runs, include_synthetic=True)
    paths = report.write_tables(table, tmp_path, runs=runs)
    return {p.name: p.read_text() for p in paths}


def _row(md: str, label: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {label} |"))


def test_tables_rows_in_order_no_bold_notes_and_formats(tmp_path):
    files = _tables(tmp_path)
    assert set(files) == {"table.md", "table.csv", "table.tex", "table_stats.csv"}
    md = files["table.md"]
    assert "**2" not in md and "average rank" not in md  # no bold or rank the tests don't back
    csv = pd.read_csv(tmp_path / "table.csv")
    assert list(csv["label"]) == list(LABELS)  # baseline first, then Table 2 order
    assert "Set-up: protocol paper\\_cifar (p1); code abc12340000" in md
    assert "Holm over the table's 6 test(s)" in md  # 3 rows x 2 columns: one family
    assert "±0.43 points" in md and "±0.23 points" in md  # one definition, both cells
    assert "McNemar" not in md and "image-level SE of Δ (seeds cannot remove)" in md
    assert "| n/a |" in md  # records without per-image correctness
    assert "Minimum detectable paired difference:" in md and "What the table can show" in md
    tex = files["table.tex"]
    assert "\\toprule" in tex and "rp\\_comhe" in tex and "$\\pm$" in tex
    tidy = pd.read_csv(tmp_path / "table_stats.csv")
    assert len(tidy) == 8 and {"p_ttest_holm", "p_wilcoxon_holm", "mdd", "dz_ci_low",
                               "p_superiority", "image_component", "n_diverged",
                               "share_trained", "p_success_holm"} <= set(tidy)
    assert "seeds_needed" not in tidy and "mcnemar_se" not in tidy


def test_notes_are_true_for_every_column_at_n3(tmp_path):
    """The n=3 note said nothing could be significant while the t column printed a dagger."""
    runs, _ = make_store(seeds=range(3), cells=CELLS[:1], sd=0.01,
                         shift={"weight_decay": 0.0, "rp_comhe": -2.0})
    runs = runs[runs["label"].isin(["weight_decay", "rp_comhe"])]
    md = _tables(tmp_path, runs=runs)["table.md"]
    rp = _row(md, "rp\\_comhe")
    assert "†" in rp and "\\*" not in rp  # primary t rejects; Wilcoxon cannot at n=3
    assert "no difference can be significant" not in md
    assert "cannot go below 2/2^3 = 0.25" in md and "its column is left out" in md
    assert "p (Wilcoxon" not in md  # the column cannot reject at n=3: not printed
    assert "median over rows" not in md and "Seeds to detect 0.3 points" in md


def test_labels_are_escaped_in_markdown_and_latex(tmp_path):
    runs, _ = make_store(labels=("weight_decay", "mhe"), seeds=range(3), cells=CELLS[:1])
    runs["label"] = runs["label"].replace({"mhe": "a|b *x* $y$ <i>"})
    files = _tables(tmp_path, runs=runs)
    row = next(line for line in files["table.md"].splitlines() if "a\\|b" in line)
    assert row.count(" | ") == 1  # two cells: the label's pipe did not split the row
    assert "\\*x\\*" in row and "\\$y\\$" in row and "\\<i\\>" in row
    assert "a|b *x* \\$y\\$" in files["table.tex"]
    assert report.tex_escape("50% & #1 ~x^2_{a}") == \
        r"50\% \& \#1 \textasciitilde{}x\textasciicircum{}2\_\{a\}"


def test_synthetic_tables_are_marked(tmp_path):
    assert "SYNTHETIC DATA" in _tables(tmp_path, synthetic=True, seeds=range(2))["table.md"]


def test_mixed_code_is_printed_under_the_table_when_allowed(tmp_path):
    runs, curves = make_store(cells=CELLS[:1], seeds=range(3))
    runs.loc[runs["seed"] == 2, "code"] = "fff00000000"
    with pytest.raises(cells.SetupError):
        report.write_report(runs, curves, tmp_path / "no", plots=False)
    assert not (tmp_path / "no").exists()  # refused before anything was written
    report.write_report(runs, curves, tmp_path / "yes", plots=False, allow_mixed_code=True)
    assert "pools runs of 2 code versions" in (tmp_path / "yes" / "table.md").read_text()


# --- paper data and comparison ----------------------------------------------------------------

POWERS = ["s0", "s1", "s2", "a0", "a1", "a2"]
# recipe.md §6, transcribed: CIFAR-100, CNN-9, final test accuracy, one unseeded run each.
RECIPE_6 = {
    ("comhe_75k", "rp_comhe"): 75.59, ("comhe_75k", "ap_comhe"): 75.13,
    ("comhe_75k", "adv_comhe"): 74.74, ("mhe_42.5k", "weight_decay"): 69.74,
    **{("mhe_42.5k", f"mhe_{s}"): v for s, v in zip(
        POWERS, [73.16, 72.85, 72.78, 71.97, 72.50, 72.76], strict=True)},
    **{("mhe_42.5k", f"hs_mhe_{s}"): v for s, v in zip(
        POWERS, [73.75, 73.60, 73.99, 73.53, 73.42, 73.94], strict=True)},
}


def test_reported_yaml_holds_exactly_the_verified_logs_and_unknown_table2():
    rep = report.load_reported()
    known = rep[rep["value"].notna()]
    assert {(r.schedule, r.label): r.value for r in known.itertuples()} == RECIPE_6
    assert (known["dataset"] == "cifar100").all() and (known["model"] == "cnn9").all()
    assert (known["metric"] == "test_acc").all() and (known["n_runs"] == 1).all()
    table2 = rep[rep["source"].str.contains("Table 2")]
    assert table2["value"].isna().all() and len(table2) == 18
    assert set(zip(table2["dataset"], table2["label"], strict=False)) == {
        (ds, lab) for ds in ("cifar10", "cifar100") for lab in report.TABLE2_LABELS}
    assert table2["note"].str.contains("could not be retrieved").all()


def test_load_reported_rejects_missing_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("source,dataset\nx,cifar10\n")
    with pytest.raises(ValueError, match="lack column"):
        report.load_reported(bad)


def _reported(entries):
    cols = ["source", "schedule", "dataset", "model", "label", "metric", "value", "n_runs", "note"]
    return pd.DataFrame([dict(zip(cols, e, strict=False)) for e in entries], columns=cols)


def test_paper_verdict_prediction_interval_by_hand():
    v = report.paper_verdict([74.0, 75.0, 76.0], 75.5)
    half = sps.t.ppf(0.975, 2) * 1.0 * math.sqrt(1 + 1 / 3)  # 4.969
    assert (v["pi_low"], v["pi_high"]) == pytest.approx((75 - half, 75 + half))
    assert v["point_verdict"] == "within the margin (point estimate)"
    assert v["difference"] == pytest.approx(-0.5)
    # s = 1: 1.645 s > the 1-point margin, so no number of seeds could show equivalence
    assert v["verdict"] == "not shown equivalent (no n can show it at this spread)"
    assert report.paper_verdict([74.0, 75.0, 76.0], 77.0)["point_verdict"] == \
        "beyond the margin (point estimate)"
    # TOST by hand at df = 2, where the t cdf is closed-form: sf(t) = (1 - t/sqrt(t^2 + 2)) / 2.
    # mean 74.1, s 0.1, SE 0.1 sqrt(4/3); the binding side is t = (-0.4 + 1) / SE.
    eq = report.paper_verdict([74.0, 74.1, 74.2], 74.5)
    t = 0.6 / (0.1 * math.sqrt(4 / 3))
    assert eq["p_tost"] == pytest.approx((1 - t / math.sqrt(t * t + 2)) / 2, rel=1e-6)
    assert eq["verdict"] == "shown equivalent within ±margin"
    assert report.paper_verdict([74.0, 74.1, 74.2], 79.0)["verdict"] == "differs"
    assert report.paper_verdict([74.0, 74.01, 74.02], 74.5)["verdict"] == \
        "differs by less than the margin"
    assert report.paper_verdict([74.0], 74.0)["verdict"] == "one run: no prediction interval"
    assert report.paper_verdict([], 74.0)["verdict"] == "no runs"
    assert report.paper_verdict([99.0, 99.5, 100.0], 99.0)["pi_high"] == 100.0


@pytest.mark.parametrize("n", [5, 20])
def test_a_perfect_reproduction_lands_inside_the_prediction_interval_95_percent(n):
    """Against the CI of our mean it was flagged 'outside' with probability 0.32 (n=5) and
    0.65 (n=20); simulated here, independently of the verdict's own arithmetic."""
    rng = np.random.default_rng(1)
    inside = []
    for _ in range(2000):
        ours, paper = rng.normal(75, 0.5, n), rng.normal(75, 0.5)
        v = report.paper_verdict(ours, paper)
        inside.append(v["pi_low"] <= paper <= v["pi_high"])
    assert np.mean(inside) == pytest.approx(0.95, abs=0.015)


def test_paper_comparison_gives_every_verdict():
    runs, _ = make_store(cells=CELLS[1:], seeds=range(5))
    runs = runs[~((runs.label == "so") & (runs.seed > 0))]  # one run only
    mean_rp = runs[runs.label == "rp_comhe"]["test_acc"].mean()
    rep = _reported([
        ("log", "comhe_75k", "cifar100", "cnn9", "rp_comhe", "test_acc", mean_rp, 1, ""),
        ("log", "comhe_75k", "cifar100", "cnn9", "mhe", "test_acc", 50.0, 1, ""),
        ("log", "mhe_42.5k", "cifar100", "cnn9", "weight_decay", "test_acc", 69.74, 1, ""),
        ("t2", None, "cifar100", "cnn9", "srip", "test_error", None, None, "unknown"),
        ("log", "comhe_75k", "cifar100", "cnn9", "g_comhe", "test_acc", 70.0, 1, ""),
        ("log", "comhe_75k", "cifar100", "cnn9", "so", "test_acc", 70.0, 1, ""),
    ])
    rep["value"] = pd.to_numeric(rep["value"])
    comp = report.paper_comparison(runs, rep).set_index("label")
    assert comp.loc["rp_comhe", "point_verdict"] == "within the margin (point estimate)"
    assert comp.loc["rp_comhe", "verdict"].startswith(("shown equivalent", "not shown equivalent"))
    assert comp.loc["mhe", "verdict"] == "differs"
    assert comp.loc["mhe", "difference"] == pytest.approx(comp.loc["mhe", "mean"] - 50.0)
    assert comp.loc["weight_decay", "verdict"] == "not comparable (schedule differs)"
    assert comp.loc["srip", "verdict"] == "unknown (no paper value)"
    assert comp.loc["g_comhe", "verdict"] == "no runs"
    assert comp.loc["so", "verdict"] == "one run: no prediction interval"
    assert set(comp["verdict"]) <= set(report.VERDICTS)
    assert comp.loc["rp_comhe", "reproduced_schedule"] == "comhe_75k"  # from iterations


def test_schedule_of():
    assert report.schedule_of(75_000) == "comhe_75k"
    assert report.schedule_of(42_500) == "mhe_42.5k"
    assert report.schedule_of(300) == "300it"


# --- leaderboard ------------------------------------------------------------------------------

def test_leaderboard_suite_order_every_run_counted_and_escaped(tmp_path):
    runs, _ = make_store()
    runs.loc[runs.index[1], ["status", "outcome"]] = ["failed", "failed"]
    dead = runs[(runs["label"] == "mhe")].copy()
    dead[["label", "regularizer", "status", "outcome"]] = ["hs|mhe", "hs_mhe", "diverged",
                                                           "diverged"]
    dead["final_iteration"] = 12
    dead["run_id"] = dead["run_id"] + "x"
    md = report.render_leaderboard(pd.concat([runs, dead]), tmp_path / "r" / "lb.md").read_text()
    assert md.startswith("<!-- GENERATED FILE, DO NOT EDIT")
    section = md.split("## cifar100 / cnn9")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "complete" in line
            or "diverged" in line and line.startswith("| ")]
    labels = [line.split(" | ")[0][2:] for line in rows]
    assert labels == ["weight\\_decay", "so", "mhe", "hs\\|mhe", "rp\\_comhe"]
    assert "5 diverged (at iteration 12, 12, 12, 12, 12)" in rows[3]
    first = md.split("## cifar100 / cnn9")[0]
    assert "4 complete, 1 failed" in first
    assert "| # |" not in md and not list(tmp_path.rglob("*.tmp"))


def test_render_leaderboard_marks_synthetic_and_handles_empty(tmp_path):
    runs, _ = make_store(synthetic=True, seeds=range(2), cells=CELLS[:1])
    md = report.render_leaderboard(runs, tmp_path / "lb.md").read_text()
    assert "(synthetic)" in md and "| yes |" in md
    empty = report.render_leaderboard(runs, tmp_path / "e.md", include_synthetic=False)
    assert "No runs yet." in empty.read_text()


# --- write_report -----------------------------------------------------------------------------

def test_write_report_writes_everything_atomically(tmp_path):
    runs, curves = make_store(cells=CELLS[1:], seeds=range(3))
    paths = report.write_report(runs, curves, tmp_path / "out", schedule="comhe_75k")
    names = {p.name for p in paths}
    assert {"table.md", "table.csv", "table.tex", "table_stats.csv", "intervals.png",
            "intervals.pdf", "dynamics_cifar100_cnn9.png", "dynamics_cifar100_cnn9.pdf",
            "paper_comparison.md", "paper_comparison.csv"} == names
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert not list((tmp_path / "out").glob(".*"))
    comp = pd.read_csv(tmp_path / "out" / "paper_comparison.csv")
    assert "prediction interval" in (tmp_path / "out" / "paper_comparison.md").read_text()
    assert set(comp["verdict"]) <= set(report.VERDICTS)


def test_a_dollar_label_neither_crashes_plots_nor_costs_the_report(tmp_path):
    runs, curves = make_store(cells=CELLS[:1], seeds=range(3), labels=("weight_decay", "mhe"))
    runs["label"] = runs["label"].replace({"mhe": "$x_{1"})
    curves["label"] = curves["label"].replace({"mhe": "$x_{1"})
    paths = report.write_report(runs, curves, tmp_path, reported_df=_reported([]))
    assert {"intervals.png", "table.md"} <= {p.name for p in paths}


def test_one_noise_floor_in_table_and_leaderboard(tmp_path):
    """table.md said ±0.48 and the leaderboard ±0.55 for the same cell."""
    runs, _ = make_store(cells=CELLS[1:], seeds=range(3))
    runs.loc[runs["label"] == "rp_comhe", "test_acc"] -= 10  # other labels' accuracy differs
    md = _tables(tmp_path, runs=runs)["table.md"]
    lb = report.render_leaderboard(runs, tmp_path / "lb.md").read_text()
    floor = report.noise_text(cells.compare_to_baseline(runs)).split(": ")[1].split(". ")[0]
    assert floor.startswith("±") and floor in md and floor in lb
    base_acc = runs[runs["label"] == "weight_decay"]["test_acc"].mean() / 100
    assert floor == f"±{100 * math.sqrt(base_acc * (1 - base_acc) / 10_000):.2f} points"


def test_write_report_falls_back_to_synthetic_runs_and_marks_them(tmp_path):
    runs, curves = make_store(cells=CELLS[:1], seeds=range(2), synthetic=True)
    paths = report.write_report(runs, curves, tmp_path, reported_df=_reported([]), plots=False)
    assert {p.name for p in paths} >= {"table.md", "paper_comparison.md"}
    assert "SYNTHETIC DATA" in (tmp_path / "table.md").read_text()


def test_paper_values_match_runs_by_regularizer_and_mhe_power_not_only_label():
    """Suites show display labels ("RP-CoMHE"); the authors' logs are keyed by regularizer and,
    for MHE, by power ("hs_mhe_s2"): both must find the runs."""
    runs, _ = make_store(labels=("rp_comhe", "hs_mhe"), cells=CELLS[1:], seeds=range(3),
                         shift={}, iterations=42_500)
    runs["label"] = runs["regularizer"].map({"rp_comhe": "RP-CoMHE", "hs_mhe": "HS-MHE"})
    rep = _reported([
        ("log", "mhe_42.5k", "cifar100", "cnn9", "rp_comhe", "test_acc", 75.0, 1, ""),
        ("log", "mhe_42.5k", "cifar100", "cnn9", "hs_mhe_s2", "test_acc", 75.0, 1, ""),
        ("log", "mhe_42.5k", "cifar100", "cnn9", "hs_mhe_s0", "test_acc", 75.0, 1, ""),
    ])
    comp = report.paper_comparison(runs, rep).set_index("label")
    assert comp.loc["rp_comhe", "n"] == 3
    assert comp.loc["hs_mhe_s2", "n"] == 3  # power left at its default, 2
    assert comp.loc["hs_mhe_s0", "verdict"] == "no runs"
    runs.loc[runs["regularizer"] == "hs_mhe", "hparams"] = '{"power": 0}'
    comp = report.paper_comparison(runs, rep).set_index("label")
    assert comp.loc["hs_mhe_s0", "n"] == 3 and comp.loc["hs_mhe_s2", "n"] == 0


# --- settings of reported values --------------------------------------------------------------

def test_settings_match_rules():
    run = {"regularizer": "mhe", "power": 2, "half_space": False, "strength": 0.1,
           "output_strength": 1.0, "protocol": "mhe_cifar"}
    assert report.settings_match({"regularizer": ["mhe", "hs_mhe"], "power": 2,
                                  "strength": 0.1, "output_strength": 1.0}, run)
    assert report.settings_match({"power": "2", "strength": 1.0 / 10}, run)  # canonical forms
    assert not report.settings_match({"half_space": 0}, run)  # a bool is not a number
    assert not report.settings_match({"strength": 1.0}, run)
    assert not report.settings_match({"proj_dim": 40}, run)  # a setting the run lacks
    assert not report.settings_match({"protocol": "paper_cifar"}, run)
    assert not report.settings_match({"power": 2}, None)  # unresolvable run
    assert report.settings_match({}, run)


def test_paper_comparison_pairs_only_runs_made_under_the_recorded_settings():
    """The logged full-space MHE values were made at 1/10 of the code's strengths: a default
    `mhe` run (1 / 10) must not be compared with them; `strengths: logs` or the same numbers
    given explicitly are. Half-space logs match the code. The protocol must match too."""
    hp = {"default": "{}", "logs": '{"strengths": "logs"}',
          "numbers": '{"output_strength": 1.0, "strength": 0.1}'}
    frames = []  # distinct seeds per kind of run: the comparison counts seeds
    for i, (key, hparams) in enumerate(hp.items()):
        runs, _ = make_store(labels=("mhe",), cells=CELLS[1:], seeds=range(3 * i, 3 * i + 3),
                             shift={}, iterations=42_500)
        runs["hparams"], runs["protocol"], runs["label"] = hparams, "mhe_cifar", f"MHE-{key}"
        runs["run_id"] = runs["run_id"] + key
        frames.append(runs)
    hs, _ = make_store(labels=("hs_mhe",), cells=CELLS[1:], seeds=range(3), iterations=42_500)
    hs["protocol"] = "mhe_cifar"
    other, _ = make_store(labels=("mhe",), cells=CELLS[1:], seeds=range(9, 12), iterations=75_000)
    other["hparams"], other["run_id"] = hp["logs"], other["run_id"] + "75k"  # paper_cifar protocol
    runs = pd.concat([*frames, hs, other], ignore_index=True)
    rep = report.load_reported().set_index("label", drop=False)
    assert rep.loc["mhe_s2", "settings"]["strength"] == 0.1
    comp = report.paper_comparison(runs, rep[rep["dataset"] == "cifar100"].reset_index(drop=True))
    logs = comp[comp["schedule"].notna()].set_index("label")
    comp = comp.set_index("label")
    assert comp.loc["mhe_s2", "n"] == 6  # logs + numbers; not the default, not the 75k runs
    assert comp.loc["hs_mhe_s2", "n"] == 3
    assert comp.loc["mhe_s0", "n"] == 0 and comp.loc["mhe_s0", "verdict"] == "no runs"
    assert logs.loc["rp_comhe", "n"] == 0
    # entries without recorded settings (unknown values) are still found by label
    assert comp.loc["mhe", "verdict"] == "unknown (no paper value)"


def test_every_known_reported_value_records_its_settings():
    rep = report.load_reported()
    known = rep[rep["value"].notna()]
    assert len(known) == 16
    for _, e in known.iterrows():
        s = e["settings"]
        assert isinstance(s, dict) and {"regularizer", "protocol"} <= set(s), e["label"]
        assert s["protocol"] == {"comhe_75k": "paper_cifar", "mhe_42.5k": "mhe_cifar"}[e["schedule"]]
        if e["label"].startswith(("mhe_", "hs_mhe_")):
            assert {"power", "half_space", "strength", "output_strength"} <= set(s)


def test_wilcoxon_column_appears_only_where_it_can_reject_and_mdd_is_by_hand(tmp_path):
    """8 pairs, one comparison: the exact Wilcoxon can reach 2/2^8 = 0.0078 < 0.05, so its
    column is printed; the MDD is the pooled SD times the effect whose noncentral-t power is
    0.8 (checked by simulation in test_stats_power.py)."""
    from benchmark.analysis import power

    runs, _ = make_store(labels=("weight_decay", "mhe"), cells=CELLS[:1], seeds=range(8))
    md = _tables(tmp_path, runs=runs)["table.md"]
    assert "p (Wilcoxon on counts, Holm)" in md and "so it cannot reject" not in md
    table = cells.compare_to_baseline(runs)
    row = table[~table["is_baseline"]].iloc[0]
    assert row["mdd"] == pytest.approx(row["sd_diff"] * power.detectable_effect(8, 0.05))
    assert f"Minimum detectable paired difference: {row['mdd']:.2f} points" in md


def test_success_rates_and_their_fisher_test_sit_beside_the_means(tmp_path):
    runs, _ = make_store(labels=("weight_decay", "mhe"), cells=CELLS[:1], seeds=range(6))
    runs.loc[(runs["label"] == "mhe") & (runs["seed"] < 4), ["status", "outcome"]] = "diverged"
    table = cells.compare_to_baseline(runs).set_index("label")
    assert table.loc["mhe", "share_trained"] == pytest.approx(2 / 6)
    # Fisher by hand: 2/6 vs 6/6 trained; 8 trained of 12, tables as or less likely than seen
    from math import comb
    prob = {k: comb(6, k) * comb(6, 8 - k) / comb(12, 8) for k in range(2, 7)}
    expected = sum(p for p in prob.values() if p <= prob[2] + 1e-12)
    assert table.loc["mhe", "p_success"] == pytest.approx(expected)
    md = _tables(tmp_path, runs=runs)["table.md"]
    detail = [line for line in md.splitlines() if line.startswith("| mhe |")][1]
    assert "| 2/6 (33%) |" in detail
