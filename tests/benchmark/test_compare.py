"""`compare`: run-by-run reproduction verdicts between two results directories."""

from __future__ import annotations

import copy

import pytest

from benchmark.cli import main
from benchmark.compare import compare_dirs, format_comparison
from benchmark.records import record_path, write_json_atomic
from tests.benchmark.test_runner import fake_train, make_specs


@pytest.fixture
def pair(tmp_path):
    """The same three fake runs in two directories, identical to start with."""
    a, b = tmp_path / "a", tmp_path / "b"
    recs = [fake_train(s, b, progress=False) for s in make_specs(n_seeds=1)]
    for r in recs:
        write_json_atomic(record_path(a, r["run_id"]), r)
    return a, b, recs


def _edit(directory, record, fn):
    r = copy.deepcopy(record)
    fn(r)
    write_json_atomic(record_path(directory, r["run_id"]), r)


def test_identical_runs(pair):
    a, b, recs = pair
    rows = compare_dirs(a, b)
    assert [r.verdict for r in rows] == ["identical"] * 3
    text = format_comparison(rows, a, b)
    assert "summary: 3 identical" in text and "environment: the same" in text


def test_tolerance_difference_missing_and_environment(pair):
    a, b, recs = pair
    # 1: a rounding-sized change -> within tolerance
    _edit(a, recs[0], lambda r: r["curves"]["train_loss"].__setitem__(2, 0.5 + 1e-7))
    # 2: a real change at the second evaluation, on another machine
    def moved(r):
        r["curves"]["test_acc"][1] = 52.0
        r["curves"]["test_acc"][2] = r["final"]["test_acc"] = 63.0
        r["final"]["test_error"] = 37.0
        r["versions"]["torch"] = "2.4.0"
        r["device"] = "cpu (other, 8 threads)"
    _edit(a, recs[1], moved)
    # 3: gone from the results, and a new run only in the results
    record_path(a, recs[2]["run_id"]).unlink()
    _edit(a, recs[2], lambda r: r.update(run_id="f" * 16))
    rows = {r.run_id: r for r in compare_dirs(a, b)}
    assert rows[recs[0]["run_id"]].verdict == "within tolerance"
    diff = rows[recs[1]["run_id"]]
    assert diff.verdict == "different" and diff.first_difference == (5, "test_acc")
    assert diff.final_error == (37.0, 40.0) and diff.max_abs_difference == pytest.approx(3.0)
    assert diff.environment["torch"] == ("2.4.0", "2.14.1")
    assert rows[recs[2]["run_id"]].verdict == "missing" and rows["f" * 16].verdict == "missing"
    text = format_comparison(list(rows.values()), a, b)
    assert "summary: 1 within tolerance, 1 different, 2 missing" in text
    assert "largest final test-error difference: 3.00 points" in text
    assert "environment differs: torch: 2.4.0 here vs 2.14.1 in the reference" in text


def test_status_change_is_a_difference(pair):
    a, b, recs = pair
    _edit(a, recs[0], lambda r: r.update(status="diverged", reason="non-finite loss at iteration 7"))
    row = {r.run_id: r for r in compare_dirs(a, b)}[recs[0]["run_id"]]
    assert row.verdict == "different" and row.note == "status diverged vs complete"


def test_compare_command(pair, capsys):
    a, b, recs = pair
    assert main(["compare", "--results", str(a), "--reference", str(b)]) == 0
    assert "summary: 3 identical" in capsys.readouterr().out
    _edit(a, recs[0], lambda r: r["curves"]["penalty"].__setitem__(1, 9.0))
    assert main(["compare", "--results", str(a), "--reference", str(b)]) == 0
    assert main(["compare", "--results", str(a), "--reference", str(b), "--strict"]) == 1
    assert main(["compare", "--results", str(a / "nope"), "--reference", str(b)]) == 2
    assert "no run records under" in capsys.readouterr().err
