"""Crash safety: a runner killed with SIGKILL at random moments and restarted finishes with
exactly one valid record per run and no leftovers; two runners on one results directory do each
run once. Runners are subprocesses running the fake engine of test_runner.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmark.records import load_record, record_path
from tests.benchmark.test_runner import make_specs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from tests.benchmark.test_runner import make_specs
from benchmark.sweep import run_suite
summary = run_suite(make_specs(), sys.argv[1], jobs=int(sys.argv[2]),
                    train_fn="tests.benchmark.test_runner:fake_train", progress=False, poll_s=0.05)
print(summary)
"""


def start_runner(results: Path, log: Path, jobs: int = 1, sleep: float = 0.25) -> subprocess.Popen:
    env = {**os.environ, "FAKE_TRAIN_LOG": str(log), "FAKE_TRAIN_SLEEP": str(sleep),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(results), str(jobs)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def counts(log: Path, kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        k, run_id, _ = line.split()
        if k == kind:
            out[run_id] = out.get(run_id, 0) + 1
    return out


def check_finished(results: Path, log: Path) -> None:
    specs = make_specs()
    for spec in specs:
        record = load_record(record_path(results, spec.run_id))
        assert record is not None and record["status"] == "complete", spec.run_id
    assert sorted(p.name for p in results.glob("*.json")) == sorted(
        f"{s.run_id}.json" for s in specs)  # no temp files, nothing else
    assert list((results / "checkpoints").iterdir()) == []  # no checkpoint or temp left
    assert all(n == 1 for n in counts(log, "end").values())  # no run finished twice


def test_kill_minus_9_at_random_moments_then_restart(tmp_path):
    rng = random.Random(1234)
    results, log = tmp_path / "res", tmp_path / "train.log"
    kills = 0
    for jobs, rounds in ((1, 3), (2, 2)):
        for _ in range(rounds):
            started = sum(counts(log, "start").values())
            proc = start_runner(results, log, jobs)
            # Kill at a random moment once this runner is inside a run: a fixed delay from launch
            # races interpreter start-up, and on a fast machine the runs were done before it fired.
            deadline = time.time() + 60
            while (proc.poll() is None and sum(counts(log, "start").values()) == started
                   and time.time() < deadline):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, like a power cut
                kills += 1
            proc.wait()
    assert kills >= 3
    proc = start_runner(results, log)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "6 runs: 6 done" in out
    check_finished(results, log)
    restarted = [n for n in counts(log, "start").values() if n > 1]
    assert len(counts(log, "start")) == 6 and (restarted or kills)


def test_two_runners_together_do_each_run_once(tmp_path):
    results, log = tmp_path / "res", tmp_path / "train.log"
    procs = [start_runner(results, log, sleep=0.4), start_runner(results, log, sleep=0.4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("6 runs: 6 done" in out for out in outs), outs  # both wait for the other's runs
    assert counts(log, "start") == {s.run_id: 1 for s in make_specs()}
    check_finished(results, log)
