"""The Slurm path on a real one-node Slurm (tools/slurm-local-cluster): a job array, preemption,
time limits and cancellation, end to end.

Needs root and Debian's Slurm packages: the script installs them with apt-get if missing
(slurmctld, slurmd, slurm-client, munge, slurmdbd, mariadb-server) and starts munged, MariaDB,
slurmdbd, slurmctld and slurmd. COMHE_SLURM_TESTS=0 turns these tests off (nothing installed or
started); elsewhere (not root, no apt-get) every test here is skipped with the script's reason.
The first line of a test run says which (tests/conftest.py). The cluster is started once for
the module and stopped after.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from benchmark.analysis.compare import compare_dirs
from benchmark.config import RunSpec
from benchmark.records import checkpoint_path, load_record, record_path
from benchmark.sweep import run_suite
from benchmark.sweep.slurm import SlurmOptions, submit_slurm
from benchmark.sweep.slurm_jobs import job_states, load_jobs
from benchmark.sweep.status import suite_status
from tests.helpers import fake_train, local_slurm_up, make_specs, run_slurm_script, tiny_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    # not under pytest's 0700 temp root: MariaDB (as the mysql user) must reach its data
    state = Path(tempfile.mkdtemp(prefix="comhe-slurm-"))
    env = local_slurm_up(state)  # skips when COMHE_SLURM_TESTS=0 or not root: nothing installed
    # sbatch exports this process's environment to the tasks: SLURM_CONF for submitit's
    # commands, PYTHONFAULTHANDLER so a task hit by SIGABRT prints its stacks (_diagnose)
    old = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONFAULTHANDLER")}
    os.environ.update(SLURM_CONF=str(state / "etc" / "slurm.conf"), PYTHONFAULTHANDLER="1")
    try:
        yield state
    finally:
        run_slurm_script("down", env, timeout=120)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _options(**kw) -> SlurmOptions:
    # a CPU-only node: no GPUs to ask for, one core per task so tasks share the machine
    return SlurmOptions(**{"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10, **kw})


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 1.0, jobs=(), logs: Path | None = None):
    """Poll ``predicate`` until it is true. On a time-out, ``jobs`` still running are sent SIGABRT
    (with PYTHONFAULTHANDLER set by the fixture, Python prints every thread's stack to the
    task's stderr) and the failure message carries Slurm's states and the tail of every task
    log under ``logs``: a task that hangs says where."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{_diagnose(jobs, logs)}")


def _diagnose(jobs, logs: Path | None) -> str:
    ids = [j.job_id for j in jobs]
    states = job_states(ids) if ids else {}
    for job_id, state in states.items():
        if state in ("RUNNING", "COMPLETING"):
            subprocess.run(["scancel", "--signal=ABRT", job_id], check=False)
    time.sleep(3)  # the dump reaches the log
    tails = [f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-40:])
             for f in sorted((logs or Path("/nonexistent")).rglob("*_log.*"))]
    return f"Slurm states: {states}\n" + "\n".join(tails)


def _final(results: Path, specs) -> bool:
    return all((load_record(record_path(results, s.run_id)) or {}).get("status") in ("complete", "diverged", "failed")
               for s in specs)


def slow_train(spec: RunSpec, results_dir: Path, *, progress: bool = True) -> dict:
    """A fake run of SLOW_TRAIN_S one-second steps that checkpoints after every step and resumes
    from its checkpoint: what a requeued task must do, without the cost of real training."""
    total = int(os.environ.get("SLOW_TRAIN_S", "60"))
    ckpt = checkpoint_path(results_dir, spec.run_id)
    done = int(ckpt.read_text()) if ckpt.exists() else 0
    resumed = [done] if done else []
    while done < total:
        time.sleep(1.0)
        done += 1
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(str(done))
        tmp.replace(ckpt)
    record = fake_train(spec, results_dir, progress=False)  # writes the record, drops checkpoints
    record["resumed_from"] = resumed
    from benchmark.records import write_json_atomic

    write_json_atomic(record_path(results_dir, spec.run_id), record)
    return record


SLOW = "tests.benchmark.test_slurm_cluster:slow_train"


def _real_specs(n_seeds=2, **over):
    return [tiny_spec(reg, seed, suite="slurm-test", **{"iterations": 12, **over})
            for seed in range(n_seeds) for reg in ("weight_decay", "rp_comhe")]


# The CI run of 2026-11-30 was cut by pytest's 600 s time-out (then the default) while this wait
# still polled: one of the 4 tasks had started without writing a record. Not reproduced since
# (4 passes of 4 at load averages 5-10 on 2 cores); if it comes back, _diagnose says where the
# task stood.
@pytest.mark.timeout(1200)
def test_suite_as_one_job_array_equals_a_local_run(cluster, tmp_path):
    specs = _real_specs()
    jobs = submit_slurm(specs, tmp_path / "slurm", options=_options())
    assert len(jobs) == len(specs) and len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    assert load_jobs(tmp_path / "slurm") == {s.run_id: j.job_id for s, j in zip(specs, jobs)}
    run_suite(specs, tmp_path / "local", progress=False)
    _wait(lambda: _final(tmp_path / "slurm", specs), 900, "the job array's records", jobs=jobs,
          logs=tmp_path / "slurm" / "slurm")
    rows = compare_dirs(tmp_path / "slurm", tmp_path / "local").runs
    assert [r.verdict for r in rows] == ["identical"] * len(specs), [(r.verdict, r.note) for r in rows]
    # nothing left to submit on a second call
    assert submit_slurm(specs, tmp_path / "slurm", options=_options()) == []


def test_preempted_task_checkpoints_requeues_and_resumes(cluster, tmp_path):
    (spec,) = _real_specs(n_seeds=1, iterations=60, eval_every=20, checkpoint_every=3)[1:]
    (job,) = submit_slurm([spec], tmp_path / "slurm", options=_options())
    _wait(lambda: checkpoint_path(tmp_path / "slurm", spec.run_id).exists(), 600, "a checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    _wait(lambda: _final(tmp_path / "slurm", [spec]), 600, "the requeued task's record")
    record = load_record(record_path(tmp_path / "slurm", spec.run_id))
    assert record["status"] == "complete" and record["resumed_from"], record.get("resumed_from")
    run_suite([spec], tmp_path / "local", progress=False)
    (row,) = compare_dirs(tmp_path / "slurm", tmp_path / "local").runs
    assert row.verdict == "identical", (row.verdict, row.first_difference)


@pytest.mark.timeout(1200)
def test_time_limit_requeues_until_done_and_too_many_timeouts_fail(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLOW_TRAIN_S", "60")
    ok, over = make_specs(n_seeds=1, regularizers=("weight_decay", "hs_mhe"), suite="limits")
    # 1-minute limit, USR2 40 s before it. slurmctld checks limits every ~30 s, so the signal
    # comes 20-50 s into an allocation: the 60 s run needs two or more of them.
    limits = {"timeout_min": 1, "signal_delay_s": 40}
    submit_slurm([ok], tmp_path / "ok", train_fn=SLOW, options=_options(max_num_timeout=5, **limits))
    monkeypatch.setenv("SLOW_TRAIN_S", "600")
    submit_slurm([over], tmp_path / "over", train_fn=SLOW,
                 options=_options(max_num_timeout=0, **limits))
    _wait(lambda: _final(tmp_path / "ok", [ok]), 900, "the time-limited run's record", poll_s=2)
    record = load_record(record_path(tmp_path / "ok", ok.run_id))
    assert record["status"] == "complete" and record["resumed_from"]
    # out of requeues: submitit raises inside the task, which records the run as failed
    _wait(lambda: _final(tmp_path / "over", [over]), 300, "the out-of-requeues record", poll_s=2)
    failed = load_record(record_path(tmp_path / "over", over.run_id))
    assert failed["status"] == "failed" and "timed-out too many times" in failed["reason"]
    assert submit_slurm([over], tmp_path / "over", train_fn=SLOW, options=_options()) == []


def test_cancelled_task_fails_with_slurms_state_and_rerun_submits_only_the_missing(cluster, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("SLOW_TRAIN_S", "600")
    slow, new = make_specs(n_seeds=1, regularizers=("weight_decay", "hs_mhe"), suite="cancel")
    res = tmp_path / "res"
    (job,) = submit_slurm([slow], res, train_fn=SLOW, options=_options())
    _wait(lambda: job_states([job.job_id]).get(job.job_id) == "RUNNING", 300, "the task to start")
    table = suite_status([slow], res)
    assert table.loc[0, "slurm"] == "RUNNING" and table.loc[0, "state"] == "running"
    subprocess.run(["scancel", job.job_id], check=True)
    _wait(lambda: job_states([job.job_id]).get(job.job_id) == "CANCELLED", 120, "CANCELLED")
    monkeypatch.setenv("SLOW_TRAIN_S", "1")
    jobs = submit_slurm([slow, new], res, train_fn=SLOW, options=_options())
    assert [j.job_id for j in jobs] and load_jobs(res)[new.run_id] == jobs[0].job_id
    assert len(jobs) == 1  # only the run that never ran; the cancelled one has its record
    failed = load_record(record_path(res, slow.run_id))
    assert failed["status"] == "failed" and f"job {job.job_id} ended CANCELLED" in failed["reason"]
    _wait(lambda: _final(res, [new]), 300, "the new run's record")


def test_a_stuck_task_is_diagnosed_with_its_stacks(cluster, tmp_path, monkeypatch):
    """What _wait reports on a time-out: Slurm's state, and the Python stacks of a running task."""
    monkeypatch.setenv("SLOW_TRAIN_S", "600")
    (spec,) = make_specs(n_seeds=1, regularizers=("weight_decay",), suite="stuck")
    (job,) = submit_slurm([spec], tmp_path / "res", train_fn=SLOW, options=_options())
    _wait(lambda: checkpoint_path(tmp_path / "res", spec.run_id).exists(), 300, "a first step")
    report = _diagnose([job], tmp_path / "res" / "slurm")
    assert "RUNNING" in report and "in slow_train" in report, report
    _wait(lambda: job_states([job.job_id]).get(job.job_id) not in ("RUNNING", "COMPLETING"), 120,
          "the aborted task to end")
