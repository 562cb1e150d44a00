"""`python -m benchmark report` on real (committed, old-format) records: it validates before
it writes, never destroys a store, names skipped records, refuses pooled set-ups (issue 13,
issue 18 M3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.records import record_files
from tests.helpers import copy_records

QUICK = Path(__file__).resolve().parents[2] / "results" / "quick" / "runs"


@pytest.fixture
def quick(tmp_path):
    if not record_files(QUICK):
        pytest.fail(f"committed records missing under {QUICK}")
    res = tmp_path / "quick"
    copy_records(QUICK, res)
    return res


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_report_on_the_committed_old_records(quick, capsys):
    assert main(["report", "--results", str(quick)]) == 0
    out = capsys.readouterr().out
    md = (quick / "report" / "table.md").read_text()
    assert "| Baseline |" in md and "3 complete" in md and "n/a" in md  # no per-image bits
    assert (quick / "store" / "runs.parquet").is_file() and "suggested seeds" in out


def test_a_directory_with_only_a_store_is_not_destroyed(quick, capsys):
    assert main(["report", "--results", str(quick)]) == 0
    for f in record_files(quick):
        f.unlink()
    shutil.rmtree(quick / "report")
    before = _files(quick / "store")
    assert main(["report", "--results", str(quick)]) == 0
    assert _files(quick / "store") == before
    assert "| Baseline |" in (quick / "report" / "table.md").read_text()


def test_out_gets_the_store_and_results_stay_untouched(quick, tmp_path):
    before = _files(quick)
    assert main(["report", "--results", str(quick), "--out", str(tmp_path / "o")]) == 0
    assert _files(quick) == before
    assert (tmp_path / "o" / "store" / "runs.parquet").is_file()
    assert (tmp_path / "o" / "table.md").is_file()


def test_a_good_store_is_not_replaced_by_a_smaller_one(quick, capsys):
    assert main(["report", "--results", str(quick)]) == 0
    before = _files(quick / "store")
    victim = sorted(quick.glob("*.json"))[0]
    victim.unlink()
    capsys.readouterr()
    assert main(["report", "--results", str(quick)]) == 0
    assert _files(quick / "store") == before
    assert "it holds 1 run(s)" in capsys.readouterr().err


def test_skipped_records_are_named(quick, capsys):
    (quick / "broken.json").write_text("{")
    assert main(["report", "--results", str(quick), "--out", str(quick / "o")]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.json: unreadable JSON" in err


def test_a_pooled_setup_is_refused_before_anything_is_written(quick, capsys):
    src = sorted(quick.glob("*.json"))[0]
    rec = json.loads(src.read_text())
    rec["config"]["protocol"]["iterations"] = 12  # a smoke-like run in the same cell
    rec["config"]["protocol"]["name"] = "smoke"
    rec["run_id"] = "f" * 16
    (quick / f"{'f' * 16}.json").write_text(json.dumps(rec))
    assert main(["report", "--results", str(quick)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol_hash" in err[0] and "--protocol" in err[0]
    assert not (quick / "store").exists() and not (quick / "report").exists()
    assert main(["report", "--results", str(quick), "--protocol", "cpu_quick"]) == 0


def test_bad_where_is_one_line(quick, capsys):
    assert main(["report", "--results", str(quick), "--where", "colour=red"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--where" in err[0]
    assert not (quick / "report").exists()
