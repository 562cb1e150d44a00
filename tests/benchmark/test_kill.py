"""Crash safety: a runner killed with SIGKILL at random moments and restarted finishes with
exactly one valid record per run and no leftovers; two runners on one results directory do each
run once. Runners are subprocesses running the fake engine of tests/helpers.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.records import load_record, record_path
from tests.helpers import FAKE_TRAIN, ROOT, log_counts, make_specs, subprocess_env

SCRIPT = f"""
import sys
from tests.helpers import make_specs
from benchmark.sweep import run_suite
summary = run_suite(make_specs(), sys.argv[1], jobs=int(sys.argv[2]),
                    train_fn="{FAKE_TRAIN}", progress=False, poll_s=0.05)
print(summary)
"""


def start_runner(results: Path, log: Path, jobs: int = 1, sleep: float = 0.25) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(results), str(jobs)], cwd=ROOT,
                            env=subprocess_env(fake_log=log, fake_sleep=sleep),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def check_finished(results: Path, log: Path) -> None:
    specs = make_specs()
    for spec in specs:
        record = load_record(record_path(results, spec.run_id))
        assert record is not None and record["status"] == "complete", spec.run_id
    assert sorted(p.name for p in results.glob("*.json")) == sorted(
        f"{s.run_id}.json" for s in specs)  # no temp files, nothing else
    assert list((results / "checkpoints").iterdir()) == []  # no checkpoint or temp left
    assert all(n == 1 for n in log_counts(log, "end").values())  # no run finished twice


# Six runner start-ups (each imports torch): 40-110 s on 2 busy cores, so not in the quick set.
@pytest.mark.slow
def test_kill_minus_9_at_random_moments_then_restart(tmp_path):
    rng = random.Random(1234)
    results, log = tmp_path / "res", tmp_path / "train.log"
    kills = 0
    interrupted: set[str] = set()  # runs a kill caught between their start and their record
    for jobs, rounds in ((1, 3), (2, 2)):
        for _ in range(rounds):
            started = sum(log_counts(log, "start").values())
            proc = start_runner(results, log, jobs)
            # Kill at a random moment once this runner is inside a run: a fixed delay from launch
            # races interpreter start-up, and on a fast machine the runs were done before it fired.
            deadline = time.time() + 60
            while (proc.poll() is None and sum(log_counts(log, "start").values()) == started
                   and time.time() < deadline):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, like a power cut
                kills += 1
            proc.wait()
            interrupted |= {run_id for run_id in log_counts(log, "start")
                            if load_record(record_path(results, run_id)) is None}
    assert kills >= 3
    proc = start_runner(results, log)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "6 runs: 6 done" in out
    check_finished(results, log)
    assert len(log_counts(log, "start")) == 6
    # The kills hit runs in flight (a kill that only ever lands between runs tests nothing), and
    # every run so cut was started again and finished.
    assert interrupted, "no kill landed inside a run"
    starts = log_counts(log, "start")
    assert all(starts[run_id] >= 2 for run_id in interrupted), (interrupted, starts)


def test_two_runners_together_do_each_run_once(tmp_path):
    results, log = tmp_path / "res", tmp_path / "train.log"
    procs = [start_runner(results, log, sleep=0.4), start_runner(results, log, sleep=0.4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("6 runs: 6 done" in out for out in outs), outs  # both wait for the other's runs
    assert log_counts(log, "start") == {s.run_id: 1 for s in make_specs()}
    check_finished(results, log)
