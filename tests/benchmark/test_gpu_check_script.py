"""``python -m benchmark gpu-check``: the one-call GPU script keeps what it measured.

GPU time may be minutes and one command may be cut off, so the script writes everything after
every section, skips what its budget cannot fit, and survives a failing section. Checked here
on the CPU without measuring anything.
"""

import json
import subprocess
import sys
from pathlib import Path

from benchmark.tools.gpu_check import Report

ROOT = Path(__file__).resolve().parents[2]


def test_report_keeps_each_section_and_survives_failures(tmp_path):
    report = Report(tmp_path, budget_s=60)
    report.section("first", 1, lambda: ("table one", {"rows": [1]}))

    def broken():
        raise RuntimeError("CUDA graph capture failed")

    report.section("second", 1, broken)
    report.section("third", 10_000, lambda: ("never runs", None))
    summary = (tmp_path / "summary.md").read_text()
    assert "table one" in summary
    assert "FAILED: RuntimeError: CUDA graph capture failed" in summary
    assert "third\n\nSKIPPED: needs ~10000s" in summary
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["sections"] == {"first": {"rows": [1]}, "second": None, "third": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "summary.md"]


def test_script_with_no_budget_skips_everything_and_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmark.tools.gpu_check", "--out", str(tmp_path),
                        "--budget-s", "0", "--paper-run"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "summary.md").read_text()
    sections = [ln for ln in summary.splitlines() if ln.startswith("## ")]
    # tests, 4 perf plans, 2 shortened runs, the whole paper run and DDP over NCCL
    assert len(sections) == 9 and summary.count("SKIPPED") == 9, summary
    assert "75000 it" in sections[-2] and "DDP nccl" in sections[-1]
