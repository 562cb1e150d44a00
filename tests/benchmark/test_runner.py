"""The local runner with the fake engine of tests/helpers.py: skipping, retrying, failures,
locks, workers, Slurm path."""

from __future__ import annotations

import os
import threading

import filelock
import pytest

from benchmark.config import ConfigError
from benchmark.records import atomic_write, checkpoint_path, load_record, lock_path, record_path
from benchmark.sweep import run_suite
from benchmark.sweep.status import format_status, suite_status
from tests.helpers import FAKE_TRAIN as TRAIN
from tests.helpers import ROOT, fake_train, make_specs, starts


def test_runs_everything_once_then_skips(tmp_path, fake_env):
    specs = make_specs()
    summary = run_suite(specs, tmp_path / "res", train_fn=fake_train, progress=False)
    assert summary.ok and len(summary.executed) == 6
    assert set(summary.executed.values()) == {"complete"}
    for spec in specs:
        assert load_record(record_path(tmp_path / "res", spec.run_id))["status"] == "complete"
        assert not checkpoint_path(tmp_path / "res", spec.run_id).exists()
    again = run_suite(specs, tmp_path / "res", train_fn=fake_train, progress=False)
    assert again.executed == {} and again.ok
    assert all(n == 1 for n in starts(fake_env).values()) and len(starts(fake_env)) == 6
    assert "6 done" in str(again)


def test_failed_runs_recorded_and_retried_only_when_asked(tmp_path, fake_env):
    specs = make_specs(n_seeds=1, regularizers=("weight_decay", "boom"))
    res = tmp_path / "res"
    summary = run_suite(specs, res, train_fn=fake_train, progress=False)
    assert not summary.ok
    record = load_record(record_path(res, specs[1].run_id))
    assert record["status"] == "failed"
    assert record["reason"] == "runner: RuntimeError: boom at step 3"
    table = suite_status(specs, res)
    assert list(table["state"]) == ["done", "failed"]
    assert "boom at step 3" in format_status(table)
    assert run_suite(specs, res, train_fn=fake_train, progress=False).executed == {}
    retried = run_suite(specs, res, train_fn=fake_train, progress=False, retry_failed=True)
    assert retried.executed == {specs[1].run_id: "failed"}
    assert starts(fake_env)[specs[1].run_id] == 2 and starts(fake_env)[specs[0].run_id] == 1


def test_resumes_from_checkpoint_and_cleans_temporaries(tmp_path, fake_env):
    (spec,) = make_specs(n_seeds=1, regularizers=("mhe",))
    res = tmp_path / "res"
    atomic_write(checkpoint_path(res, spec.run_id), b"old")
    stale = [res / f".{spec.run_id}.json.x1.tmp", res / "checkpoints" / f".{spec.run_id}.pt.x2.tmp"]
    other = res / ".ffffffffffffffff.json.x3.tmp"  # another run's writer may be alive
    for p in [*stale, other]:
        p.write_text("half")
    run_suite([spec], res, train_fn=fake_train, progress=False)
    record = load_record(record_path(res, spec.run_id))
    assert record["notes"] == ["resumed from checkpoint"]
    assert not any(p.exists() for p in stale) and other.exists()


def test_busy_run_is_deferred_then_waited_for(tmp_path, fake_env):
    specs = make_specs(n_seeds=1)
    res = tmp_path / "res"
    lock_path(res, specs[0].run_id).parent.mkdir(parents=True)
    held = filelock.FileLock(str(lock_path(res, specs[0].run_id)), timeout=0, thread_local=False)
    held.acquire()
    summary = run_suite(specs, res, train_fn=fake_train, progress=False, wait_for_others=False)
    assert specs[0].run_id not in summary.executed and len(summary.executed) == 2
    assert suite_status(specs, res)["state"].tolist() == ["running", "done", "done"]
    threading.Timer(0.3, held.release).start()  # the "other runner" dies without a record
    summary = run_suite(specs, res, train_fn=fake_train, progress=False, poll_s=0.05)
    assert summary.executed == {specs[0].run_id: "complete"} and summary.ok


def test_status_of_untouched_results_dir_is_pending(tmp_path):
    table = suite_status(make_specs(n_seeds=1), tmp_path / "nothing-here")
    assert table["state"].tolist() == ["pending"] * 3
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.parametrize("make_bad", ["file", "checkpoints_is_file"])
def test_unusable_results_dir_fails_before_running(tmp_path, fake_env, make_bad):
    res = tmp_path / "res"
    if make_bad == "file":
        res.write_text("not a directory")
    else:
        res.mkdir()
        (res / "checkpoints").write_text("not a directory")
    with pytest.raises(ConfigError) as err:
        run_suite(make_specs(), res, train_fn=fake_train, progress=False)
    assert "\n" not in str(err.value) and str(res) in str(err.value)
    assert not fake_env.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_results_dir_fails(tmp_path, fake_env):
    res = tmp_path / "res"
    res.mkdir()
    res.chmod(0o500)
    try:
        with pytest.raises(ConfigError):
            run_suite(make_specs(), res, train_fn=fake_train, progress=False)
    finally:
        res.chmod(0o700)


def test_parallel_workers(tmp_path, fake_env):
    specs = make_specs(n_seeds=1, regularizers=("weight_decay", "hs_mhe", "boom"))
    res = tmp_path / "res"
    summary = run_suite(specs, res, jobs=2, train_fn=TRAIN, progress=False, devices=[])
    assert summary.executed == {specs[0].run_id: "complete", specs[1].run_id: "complete",
                                specs[2].run_id: "failed"}
    assert (res / "logs" / f"{specs[0].run_id}.log").exists()
    with pytest.raises(ConfigError, match="module-level"):
        run_suite(specs, res, jobs=2, train_fn=lambda s, r, progress: None, progress=False)


def test_slurm_path_with_submitit_debug_and_local_executors(tmp_path, fake_env):
    from benchmark.sweep import RunTask, SlurmOptions, execute

    specs = make_specs(n_seeds=1, regularizers=("weight_decay", "hs_mhe"))
    for cluster in ("debug", "local"):
        res = tmp_path / cluster
        options = SlurmOptions(cluster=cluster, gpus_per_node=0, cpus_per_task=1, timeout_min=5,
                               partition="gpu")
        jobs = execute(specs, res, executor="slurm", train_fn=TRAIN, slurm=options).jobs
        assert len(jobs) == 2
        results = [job.result() for job in jobs]
        assert [r["status"] for r in results] == ["complete", "complete"]
        assert suite_status(specs, res)["state"].tolist() == ["done", "done"]
        assert execute(specs, res, executor="slurm", train_fn=TRAIN, slurm=options).jobs == []
    task = RunTask(tmp_path / "x", TRAIN)
    delayed = task.checkpoint(specs[0], None)
    assert delayed.function is task and delayed.args == (specs[0], None)
    with pytest.raises(ConfigError, match="unknown executor"):
        execute(specs, tmp_path, executor="pbs")


@pytest.mark.slow
def test_end_to_end_smoke_suite_with_real_engine(tmp_path):
    from benchmark import training as engine
    from benchmark.analysis.store import build_store
    from benchmark.suites import load_suite

    # The smoke suite's grid, shortened further: this CPU is shared and slow.
    short = {"iterations": 4, "eval_every": 2, "checkpoint_every": 2, "schedule.milestones": [2]}
    suite = load_suite("smoke", overrides=short).with_regularizers(["weight_decay", "rp_comhe"])
    specs = [s for s in suite.expand() if s.seed == 0]
    summary = run_suite(specs, tmp_path, progress=False)
    assert summary.ok, str(summary)
    runs, curves = build_store(tmp_path)
    assert len(runs) == len(specs) and set(runs["status"]) <= {"complete", "diverged"}
    assert runs["synthetic"].all() and len(curves) >= len(specs)
    assert run_suite(specs, tmp_path, progress=False, train_fn=engine.train).executed == {}


def test_workers_see_the_repository_root_not_the_package_folder(tmp_path):
    """Workers get the repository root on PYTHONPATH: `benchmark` imports, while `records` (a
    module inside benchmark/) is not importable as a top-level module that could shadow an
    installed package of that name."""
    import subprocess
    import sys

    from benchmark.sweep.local import Workers

    env = Workers(1, fake_train, False, None, False)._env(None)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    code = ("import importlib.util, benchmark; "
            "print(importlib.util.find_spec('records') is None, importlib.util.find_spec('stats') is None)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
