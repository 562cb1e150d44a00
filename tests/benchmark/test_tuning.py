"""Tuning stages (issue 24): the grid on the validation split, the choice file, the final stage."""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path

import pytest
import yaml

from benchmark import records
from benchmark.cli import main
from benchmark.config import ConfigError
from benchmark.suites import load_suite
from benchmark.tuning import choice_path, final_specs, stage_specs, tune_specs

# digits, tiny: 4 iterations of 32 on 96 training images, 200 held out
SUITE = """\
protocol: smoke
protocol_overrides: {iterations: 4, eval_every: 2, checkpoint_every: 100, schedule.milestones: [],
                     data.max_train: 96, runtime.threads: 1}
datasets: [digits]
models: [{name: cnn9, kwargs: {width: 0.125}}]
regularizers: [{name: weight_decay, label: Baseline}, so]
seeds: [0]
tuning:
  validation: 200
  seeds: [7, 8]
  grid:
    Baseline: {param: optimizer.weight_decay, values: [1e-4, 5.0e-3]}
    so: {param: strength, values: [1.0e-4, 1.0e-2]}
"""


def write(tmp_path: Path, body: str = SUITE) -> Path:
    path = tmp_path / "tuned.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("change, message", [
    ("so: {param: strength, values: [1.0e-4, 1.0e-2]}",
     "so: {param: strength, values: [1.0e-4, 1.0e-2, 1.0]}"),
    ("    so: {param: strength, values: [1.0e-4, 1.0e-2]}\n", ""),
    ("values: [1e-4, 5.0e-3]", "values: [1e-4]"),
    ("seeds: [7, 8]", "seeds: [7, 7]"),
])
def test_bad_grids_fail_in_one_line(tmp_path, change, message):
    bad = SUITE.replace(change, message) if message else SUITE.replace(change, "")
    with pytest.raises(ConfigError, match="tuning") as err:
        load_suite(write(tmp_path, bad), validate=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("stage", ["tune", "final"])
def test_a_stage_needs_a_tuning_section(tmp_path, stage):
    plain = load_suite(write(tmp_path, SUITE.split("tuning:")[0]), validate=False)
    with pytest.raises(ConfigError, match="no tuning section"):
        stage_specs(plain, stage, tmp_path)


def test_grid_points_set_the_protocol_field_or_the_hyper_parameter(tmp_path):
    suite = load_suite(write(tmp_path), validate=False)
    specs = tune_specs(suite)
    assert len(specs) == 2 * 2 * 2  # methods x values x seeds: the same budget for each method
    base = [s for s in specs if s.regularizer == "weight_decay"]
    assert sorted({s.protocol.optimizer.weight_decay for s in base}) == [1e-4, 5e-3]
    so = [s for s in specs if s.regularizer == "so"]
    assert {s.protocol.optimizer.weight_decay for s in so} == {5e-4}  # the protocol's own
    assert sorted({s.regularizer_hparams["strength"] for s in so}) == [1e-4, 1e-2]
    assert all(s.protocol.data.validation == 200 and s.suite == "tuned:tune" for s in specs)
    assert {s.seed for s in specs} == {7, 8}


def test_stages_end_to_end(tmp_path, capsys):
    path, results = write(tmp_path), tmp_path / "results"
    assert main(["run", "--suite", str(path), "--results", str(results)]) == 2
    assert "--stage tune" in capsys.readouterr().err
    assert main(["run", "--suite", str(path), "--stage", "final", "--results", str(results)]) == 2
    assert "no choice file" in capsys.readouterr().err

    assert main(["run", "--suite", str(path), "--stage", "tune", "--results", str(results),
                 "--no-progress"]) == 0
    tuning_records = [r for _, r in records.iter_records(results / "tuning")]
    assert len(tuning_records) == 8 and not list(results.glob("*.json"))
    for rec in tuning_records:  # the test set is never evaluated in the tuning stage
        assert rec["config"]["protocol"]["data"]["validation"] == 200
        assert not [k for k in rec["final"] if k.startswith("test") or k == "n_test"]
        assert not [k for k in rec["curves"] if k.startswith("test")]
        assert "final_correct" not in rec and rec["final"]["n_val"] == 200

    choice = yaml.safe_load(choice_path(results).read_text())
    assert (results / "tuning" / "validation_curve_digits_cnn9.png").stat().st_size > 0
    by_label = {c["label"]: c for c in choice["choices"]}
    for label, c in by_label.items():
        assert [g["n"] for g in c["grid"]] == [2, 2] and len(c["grid"]) == 2
        best = min(c["grid"], key=lambda g: g["mean"])
        assert c["chosen"] == best["value"]
        errors = [r["final"]["val_error"] for r in tuning_records if r["label"] == label]
        assert sorted(e for g in c["grid"] for e in g["val_error_by_seed"].values()) == sorted(errors)
    # the spread that sizes the final stage: so - Baseline at their chosen values, seed by seed
    (spread,) = choice["spread"]

    def at_choice(label):
        c = by_label[label]
        return next(g for g in c["grid"] if g["value"] == c["chosen"])["val_error_by_seed"]

    diffs = [at_choice("so")[s] - at_choice("Baseline")[s] for s in choice["seeds"]]
    assert spread["by_method"]["so"] == {"n": 2, "mean_diff": pytest.approx(statistics.fmean(diffs)),
                                         "sd_diff": pytest.approx(statistics.stdev(diffs))}
    assert spread["sd_diff"] == pytest.approx(statistics.stdev(diffs)) and spread["df"] == 1
    assert spread["level"] == 0.05 and spread["baseline"] == "Baseline"  # one comparison

    assert main(["run", "--suite", str(path), "--stage", "final", "--results", str(results),
                 "--no-progress"]) == 0
    finals = [r for _, r in records.iter_records(results)]
    assert len(finals) == 2 and all("test_error" in r["final"] for r in finals)
    chosen = {r["label"]: r for r in finals}
    assert (chosen["Baseline"]["config"]["protocol"]["optimizer"]["weight_decay"]
            == by_label["Baseline"]["chosen"])
    assert (chosen["so"]["config"]["regularizer_hparams"]["strength"]
            == pytest.approx(by_label["so"]["chosen"]))
    assert all("validation" not in r["config"]["protocol"]["data"] for r in finals)
    assert json.loads(json.dumps(choice))  # plain data, committable
    # the report says what each setting was chosen from, beside the final table
    assert main(["report", "--results", str(results)]) == 0
    page = (results / "report" / "tuning.md").read_text()
    assert "](../tuning/validation_curve_digits_cnn9.png)" in page
    assert page.count("**chosen**") == 2 and "| so | `strength` |" in page
    capsys.readouterr()
    # the baseline's tuned weight decay is no protocol mix, but one method at two tuned
    # settings in one table is; without the choice file it is an ordinary protocol mix
    base = next(r for _, r in records.iter_records(results) if r["label"] == "Baseline")
    base["config"]["protocol"]["optimizer"]["weight_decay"] *= 10
    records.write_json_atomic(results / ("f" * 16 + ".json"), {**base, "run_id": "f" * 16})
    assert main(["report", "--results", str(results)]) == 2
    assert "mixes runs of 'Baseline' at different tuned settings" in capsys.readouterr().err
    (results / ("f" * 16 + ".json")).unlink()
    choice_path(results).rename(tmp_path / "choice.yaml")
    assert main(["report", "--results", str(results)]) == 2
    assert "mixes runs of different protocol_hash" in capsys.readouterr().err
    (tmp_path / "choice.yaml").rename(choice_path(results))

    # a changed grid makes the choice stale: the final stage refuses it in one line
    stale = write(tmp_path, SUITE.replace("values: [1e-4, 5.0e-3]", "values: [1e-4, 1.0e-3]"))
    with pytest.raises(ConfigError, match="stale"):
        final_specs(load_suite(stale, validate=False), results)


def test_shipped_fashion_tuned_suite():
    suite = load_suite("fashion_tuned", validate=False)
    assert suite.protocol.name == "fashion_cpu_long" and suite.protocol.data.validation == 0
    assert suite.protocol.schedule.warmup_iterations > 0
    assert suite.tuning.validation == 10_000 and len(suite.seeds) >= 8
    assert len({len(a.values) for a in suite.tuning.grid.values()}) == 1  # the same budget
    assert suite.tuning.grid["Baseline"].param == "optimizer.weight_decay"
    assert not set(suite.tuning.seeds) & set(suite.seeds)  # tuning seeds are not final seeds
    n_values = len(suite.tuning.grid["Baseline"].values)
    assert len(tune_specs(suite)) == len(suite.regularizers) * n_values * len(suite.tuning.seeds)


def test_a_grid_point_with_a_diverged_run_is_not_eligible_and_stuck_runs_count():
    from benchmark.analysis.choice import grid_point

    broken = grid_point(1.0, [(7, "complete", 10.0), (8, "diverged", None)])
    assert broken["broken"] == 1 and broken["n"] == 1
    stuck = grid_point(2.0, [(7, "complete", 10.0), (8, "stuck", 90.0)])
    assert stuck["broken"] == 0 and stuck["stuck"] == 1 and stuck["mean"] == 50.0
    assert stuck["sd"] == pytest.approx(56.5685, abs=1e-4)  # sqrt(2 x 40^2): by hand


def test_sensitivity_of_a_tuned_suite_is_refused_in_one_line(capsys):
    """Training a tuned suite's final stage again under a perturbation is not built: refused
    before anything runs, naming what to do instead (not a child process's traceback)."""
    from benchmark.cli import main

    assert main(["sensitivity", "--suite", "fashion_tuned", "--base", "results/fashion_tuned"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not built yet" in err[0] and "compare --subset" in err[0]
