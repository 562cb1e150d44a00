"""The results store: records -> runs/curves tables -> Parquet + CSV -> the same tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmark import records
from benchmark.config import ConfigError
from benchmark.analysis.store import (
    CURVES_SCHEMA,
    RUNS_SCHEMA,
    build_store,
    curves_for,
    filter_runs,
    load_store,
    save_store,
)
from benchmark.sweep import run_suite
from tests.helpers import fake_train, make_specs


@pytest.fixture
def results(tmp_path, monkeypatch):
    # The runner stamps its own failure records with the checkout's commit: pin it to a value
    # no fake record's commit is a prefix of, whatever HEAD happens to be.
    monkeypatch.setattr("benchmark.sweep.claims.git_state", lambda: {"commit": "0" * 40, "dirty": False})
    res = tmp_path / "res"
    run_suite(make_specs(suite="a"), res, train_fn=fake_train, progress=False)
    run_suite(make_specs(n_seeds=1, regularizers=("mhe", "boom"), suite="b"), res,
              train_fn=fake_train, progress=False)
    (res / "0000000000000000.json").write_text('{"half": ')  # not a valid record
    return res


def test_build_store(results):
    runs, curves = build_store(results)
    assert list(runs.columns) == list(RUNS_SCHEMA) and list(curves.columns) == list(CURVES_SCHEMA)
    assert len(runs) == 8 and len(curves) == 7 * 3  # the failed record has no curves
    assert set(runs["suite"]) == {"a", "b"}
    # the fake engine writes format-1 records, the runner's failure record is today's format
    assert runs.groupby("regularizer")["schema_version"].agg(set).to_dict() == {
        "boom": {records.SCHEMA_VERSION}, **{r: {1} for r in set(runs["regularizer"]) - {"boom"}}}
    boom = runs[runs["regularizer"] == "boom"].iloc[0]
    assert boom["status"] == "failed" and pd.isna(boom["test_acc"])
    row = runs[(runs["regularizer"] == "hs_mhe") & (runs["seed"] == 1)].iloc[0]
    assert row["test_acc"] == 61.0 and row["protocol"] == "fake" and row["iterations"] == 10
    assert row["git_commit"] == "def456" and row["torch_version"] == "2.14.1"
    assert row["record_path"] == f"{row['run_id']}.json"  # records at the top of DIR
    assert json.loads(row["hparams"]) == {"half_space": True, "output_strength": 10, "power": 2,
                                          "strength": 1, "strengths": "code"}  # resolved: defaults filled in


def test_round_trip_parquet_and_csv(results, tmp_path):
    written = save_store(results)
    assert sorted(p.name for p in written.values()) == [
        "curves.csv", "curves.parquet", "runs.csv", "runs.parquet"]
    assert not list((results / "store").glob(".*.tmp"))
    runs, curves = build_store(results)
    for fmt in ("parquet", "csv"):
        r, c = load_store(results, fmt=fmt)
        pd.testing.assert_frame_equal(r, runs)
        pd.testing.assert_frame_equal(c, curves)
    other = save_store(results, tmp_path / "elsewhere")
    assert other["runs.parquet"].parent == tmp_path / "elsewhere"
    pd.testing.assert_frame_equal(load_store(tmp_path / "elsewhere")[0], runs)


def test_filters(results):
    runs, curves = build_store(results)
    assert len(filter_runs(runs, suite="a")) == 6
    assert len(filter_runs(runs, git_commit="abc")) == 4  # seed 0 (the runner-written failure has 000...)
    assert len(filter_runs(runs, git_commit="0000")) == 1
    assert len(filter_runs(runs, status=["complete", "diverged"])) == 7
    assert len(filter_runs(runs, suite="a", label="hs_mhe", seed=1)) == 1
    ids = [s.run_id for s in make_specs(n_seeds=1, suite="anything")]
    assert set(filter_runs(runs, run_ids=ids)["run_id"]) == set(ids)
    assert len(curves_for(curves, filter_runs(runs, suite="b"))) == 3
    with pytest.raises(ConfigError, match="unknown column"):
        filter_runs(runs, colour="red")


def test_empty_and_missing(tmp_path):
    (tmp_path / "runs").mkdir()
    runs, curves = build_store(tmp_path)
    assert runs.empty and list(runs.columns) == list(RUNS_SCHEMA)
    save_store(tmp_path)
    assert load_store(tmp_path, fmt="csv")[0].empty
    with pytest.raises(ConfigError):
        build_store(tmp_path / "missing")


def _record(run_id="r1", **over):
    rec = {"schema_version": 1, "run_id": run_id, "status": "complete", "reason": None,
           "config": {"dataset": "digits", "model": "cnn9", "regularizer": "mhe",
                      "protocol": {"name": "p", "softmax_eps": 1e-4, "iterations": 10}},
           "seed": 0, "git": {"commit": "a" * 40, "dirty": False}, "versions": {},
           "device": "cpu", "synthetic": False, "wall_time_s": 1.0, "median_step_ms": None,
           "curves": {"iteration": [10], "test_acc": [None], "test_error": [None]},
           "final": {"iteration": 10, "test_acc": 90.0, "test_error": 10.0, "train_loss": 0.3,
                     "n_test": 360}}
    rec.update(over)
    return rec


def test_every_skipped_record_is_named_with_its_reason(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    (runs_dir / "a.json").write_text('{"half": ')
    (runs_dir / "b.json").write_text(json.dumps({"run_id": "x"}))
    (runs_dir / "c.json").write_text(json.dumps(_record("c", status="done")))
    (runs_dir / "d.json").write_text(json.dumps(_record("d", final=[1, 2])))
    (runs_dir / "e.json").write_text(json.dumps(_record("e")))
    (runs_dir / "f.json").write_text(json.dumps(_record("e")))
    skipped = []
    runs, _ = build_store(tmp_path, skipped)
    assert list(runs["run_id"]) == ["e"]
    why = {p.name: r for p, r in skipped}
    assert set(why) == {"a.json", "b.json", "c.json", "d.json", "f.json"}
    assert "unreadable JSON" in why["a.json"] and "missing field" in why["b.json"]
    assert "status 'done'" in why["c.json"] and "wrong type" in why["d.json"]
    assert "duplicate of run e in e.json" == why["f.json"]


def test_null_numbers_read_as_nan_and_outcomes_are_derived(tmp_path):
    """Strict-JSON records of diverged runs hold null for NaN (issue 18)."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    div = _record("div", status="diverged", reason="non-finite loss at iteration 7",
                  final={"iteration": 7, "test_acc": None, "test_error": None,
                         "train_loss": None, "n_test": 360})
    stuck = _record("stuck", final={"iteration": 10, "test_acc": 30.0, "test_error": 70.0,
                                    "train_loss": 8.9, "n_test": 360})
    for rec in (div, stuck, _record("ok")):
        (runs_dir / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    runs, curves = build_store(tmp_path)
    by_id = runs.set_index("run_id")
    assert by_id.loc["div", "outcome"] == "diverged" and by_id.loc["div", "final_iteration"] == 7
    assert pd.isna(by_id.loc["div", "test_acc"]) and curves["test_acc"].isna().all()
    assert by_id.loc["stuck", "outcome"] == "stuck" and by_id.loc["stuck", "status"] == "complete"
    assert by_id.loc["ok", "outcome"] == "complete" and by_id.loc["ok", "code"] == "a" * 12


def test_store_losses_names_runs_a_rebuild_would_drop(tmp_path):
    from benchmark.analysis.store import store_losses

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for rid in ("r1", "r2"):
        (runs_dir / f"{rid}.json").write_text(json.dumps(_record(rid)))
    save_store(tmp_path)
    (runs_dir / "r2.json").unlink()
    runs, _ = build_store(tmp_path)
    assert store_losses(tmp_path / "store", runs) == ["r2"]
    assert store_losses(tmp_path / "nowhere", runs) == []


def test_world_size_column_from_the_records(results):
    """One process for an engine record without the field (it predates distributed runs), None
    for a record with no runtime block (a runner-written failure; the fake engine's), and every
    segment's size for a resumed DDP run."""
    runs, _ = build_store(results)
    assert runs["world_size"].isna().all()  # the fake engine writes no runtime block
    complete = runs.loc[runs["status"] == "complete", "record_path"]
    one, two = (results / complete.iloc[0], results / complete.iloc[1])
    for path, extra in ((one, {}), (two, {"distributed": {
            "world_size": 2, "nodes": 1, "backend": "gloo", "per_rank_batch": 8,
            "world_sizes": [1, 2, 2]}})):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "runtime": {"threads": 1}, **extra}))
    runs, _ = build_store(results)
    by_path = runs.set_index("record_path")["world_size"]
    assert by_path[complete.iloc[0]] == "1" and by_path[complete.iloc[1]] == "1+2"


def test_dirty_means_code_not_docs_or_results(tmp_path):
    """An edited document or result leaves a checkout clean; an edited source file does not."""
    import subprocess

    from benchmark.records import git_state

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("code.py", "docs/notes.md", "README.md", "results/r.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    for name in ("docs/notes.md", "README.md", "results/r.json"):
        (tmp_path / name).write_text("edited\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("edited\n")
    assert git_state(tmp_path)["dirty"] is True


def test_each_record_format_has_a_reader(tmp_path):
    """Format 1 lacked machine/runtime/distributed (read as None); 2 must hold them; a later
    format is refused in one line rather than taken for absent (and overwritten by a sweep)."""
    base = {"run_id": "r", "status": "complete", "reason": None, "config": {}, "seed": 0,
            "git": {}, "versions": {}, "device": "cpu", "synthetic": False, "wall_time_s": 1.0,
            "median_step_ms": 1.0, "curves": {}, "final": {}}
    path = tmp_path / "r.json"
    records.write_json_atomic(path, {**base, "schema_version": 1})
    rec = records.load_record(path)
    assert rec["machine"] is None and rec["runtime"] is None and rec["distributed"] is None
    records.write_json_atomic(path, {**base, "schema_version": 2})
    assert records.load_record(path) is None  # a format-2 record without its fields is broken
    records.write_json_atomic(path, {**base, "schema_version": 2, "machine": {"cpu": "x"},
                                     "runtime": None, "distributed": None})
    assert records.load_record(path)["machine"] == {"cpu": "x"}
    records.write_json_atomic(path, {**base, "schema_version": records.SCHEMA_VERSION + 1})
    with pytest.raises(records.NewerRecord, match="record format 3, this CoMHE-Bench reads up to 2"):
        records.load_record(path)


def test_device_type_column_from_the_recorded_device(tmp_path):
    """CPU and CUDA kernels give different numbers, so a cell must not pool them
    (docs/statistics.md); the store reads which one trained a run from its recorded device:
    "cpu (...)" on the CPU, the card's name on CUDA, nothing for a runner-written failure."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    recs = [_record("c", device="cpu (x86_64, 1 threads)"),
            _record("g", device="NVIDIA H100 80GB HBM3",
                    machine={"cuda_device": "NVIDIA H100 80GB HBM3"}),
            _record("f", status="failed", reason="boom", device=None)]
    for rec in recs:
        (runs_dir / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    by_id = build_store(tmp_path)[0].set_index("run_id")["device_type"]
    assert by_id["c"] == "cpu" and by_id["g"] == "cuda" and pd.isna(by_id["f"])
