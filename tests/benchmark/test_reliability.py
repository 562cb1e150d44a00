"""Issue 18, runner side: every failure a hostile user found is re-run here.

Interruption (SIGINT with --jobs 1/2), two single runs at once, single runs through the runner's
claim/skip/failure path, checks before training, umask, strict JSON and YAML, checkpoints tied
to their run, a full disk (a write wrapper raising ENOSPC), a lock file deleted mid-run,
orphaned pack checkpoints, thread count and packing as numerics. Fast tests use the fake engine
of tests/helpers.py; the few that need the real engine use the smoke protocol on tiny data and
are marked slow.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import torch

from benchmark import records
from benchmark.cli import main
from benchmark.config import ConfigError, RunSpec, load_protocol, parse_set
from benchmark.records import checkpoint_path, load_record, lock_path, record_path
from benchmark.stopping import DiskFull
from benchmark.sweep import run_suite, try_run
from tests.helpers import FAKE_TRAIN as FAKE
from tests.helpers import ROOT, fake_train, make_specs, starts, subprocess_env, tiny_spec

# The command line with the fake engine behind every run (the runner, locks, workers are real).
CLI_WITH_FAKE_ENGINE = f"""
import sys
from benchmark import cli
from benchmark.sweep import dispatch
real = dispatch.run_suite  # execute() passes train_fn=None: the default engine, replaced here
dispatch.run_suite = lambda *a, train_fn=None, **k: real(*a, train_fn=train_fn or "{FAKE}", **k)
sys.exit(cli.main(sys.argv[1:]))
"""
SINGLE = ["run", "--protocol", "smoke", "--dataset", "digits", "--model", "cnn9",
          "--regularizer", "weight_decay", "--set", "model.width=0.125", "--no-progress"]


def cli_process(args, log: Path, sleep: float, script: str = CLI_WITH_FAKE_ENGINE) -> subprocess.Popen:
    env = subprocess_env(fake_log=log, fake_sleep=sleep)
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(cond, timeout=60.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def held_locks(results: Path) -> list[str]:
    out = []
    for path in (results / "locks").glob("*.lock"):
        lock = filelock.FileLock(str(path), timeout=0)
        try:
            lock.acquire()
            lock.release()
        except filelock.Timeout:
            out.append(path.name)
    return out


# --------------------------------------------------------------------------------------------
# M2: Ctrl-C / SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigint_stops_at_once_with_one_line_and_resumes(tmp_path, jobs):
    """16 runs of 1.5 s: SIGINT after the first run started stops at once: the runs in flight
    end, nothing more is handed out (counted, not timed: a clock bound fails under load), exits 130 with one line naming the resume command, no traceback,
    no failed record, no lock held; resumed (in-process: other --jobs do not change numbers)
    it finishes the suite, each run once."""
    results, log = tmp_path / "res", tmp_path / "train.log"
    args = [*SINGLE, "--seed", *map(str, range(16)), "--jobs", str(jobs), "--results", str(results)]
    proc = cli_process(args, log, sleep=1.5)
    wait_for(lambda: sum(starts(log).values()) >= 1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=60)  # a hang guard only; "at once" is counted below
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGINT)") and "resume with: python -m benchmark run" in last
    # nothing more was handed out after the signal: at most the runs in flight when it came
    # (jobs of them, or 2 x jobs if a run ended just before it), far from the queue's 16
    assert len(starts(log)) <= 2 * jobs
    assert len(list(results.glob("*.json"))) <= 2 * jobs
    assert held_locks(results) == []
    assert all(load_record(p)["status"] == "complete" for p in results.glob("*.json"))
    args[args.index("--jobs") + 1] = "1"
    proc = cli_process(args, log, sleep=0.02)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("complete") == 16
    ends = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("end")]
    assert len(ends) == len(set(ends)) == 16  # every run finished exactly once


@pytest.mark.slow
def test_sigterm_in_process_engine_checkpoints_and_exits_143(tmp_path):
    """The real engine asked to stop between two iterations writes its checkpoint, no record,
    releases its lock; the resumed run equals an undisturbed one."""
    results = tmp_path / "res"
    args = [*SINGLE, "--set", "iterations=16", "--set", "checkpoint_every=1000",
            "--set", "eval_every=8", "--set", "schedule.milestones=[12]",
            "--set", "data.max_train=64", "--set", "data.max_test=32", "--results", str(results)]
    script = "import sys; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = cli_process(args, tmp_path / "unused.log", 0, script=script)
    ckpts = results / "checkpoints"
    wait_for(lambda: proc.poll() is not None or (results / "locks").is_dir() and any(
        (results / "locks").iterdir()), timeout=120)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)")
    assert len(list(ckpts.glob("*.pt"))) == 1 and not list(results.glob("*.json"))
    assert held_locks(results) == []
    assert main(args) == 0
    resumed = next(iter(records.iter_records(results)))[1]
    assert main([*args[:-1], str(tmp_path / "undisturbed")]) == 0
    undisturbed = next(iter(records.iter_records(tmp_path / "undisturbed")))[1]
    assert resumed["curves"]["train_loss"] == undisturbed["curves"]["train_loss"]
    assert resumed["final"] == undisturbed["final"]


# --------------------------------------------------------------------------------------------
# M4: a single run goes through the runner


@pytest.mark.slow
def test_two_single_runs_at_once_train_once(tmp_path):
    results, log = tmp_path / "res", tmp_path / "train.log"
    args = [*SINGLE, "--seed", "3", "--results", str(results)]
    procs = [cli_process(args, log, sleep=1.0) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert list(starts(log).values()) == [1]
    assert sorted(o[0].split("(")[1].split(")")[0] for o in outs) == ["already recorded", "run now"]


def test_single_run_finished_is_skipped_and_exception_is_recorded(tmp_path, monkeypatch, capsys):
    from benchmark.training import loop as engine  # train() calls the loop's train_packed

    results = tmp_path / "res"

    def boom(specs, results_dir, **kw):
        raise RuntimeError("boom in the engine")

    monkeypatch.setattr(engine, "train_packed", boom)
    args = [*SINGLE, "--seed", "0", "--results", str(results)]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "runner: RuntimeError: boom in the engine" in out.out
    (path,) = results.glob("*.json")
    assert load_record(path)["status"] == "failed"
    assert main(args) == 1  # a failed run is not retried without --retry-failed
    assert "already recorded" in capsys.readouterr().out


def test_single_run_results_is_a_file_and_every_seed_validated(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert main([*SINGLE, "--seed", "0", "--results", str(target)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    results = tmp_path / "res"
    assert main([*SINGLE, "--seed", "0", "-1", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert "seed must be an integer in [0, 4294967295], got -1" in err and "\n" not in err
    assert not results.exists()


# --------------------------------------------------------------------------------------------
# M5: checks before training; a rerun after the fix just works


@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10"], "cifar10 not found under"),
    (["--dataset", "fashion_mnist"], "fashion_mnist not found under"),
    (["--dataset", "digits", "--seed", "1", str(2**40)], "seed must be an integer in [0, 4294967295]"),
    (["--dataset", "synthetic", "--set", "data.image_size=8"], "cannot take 8x8 images"),
    (["--dataset", "fashion_mnist", "--set", "data.image_size=16"], "larger than data.image_size=16"),
    (["--dataset", "digits", "--set", "batch_size=2000"], "larger than the training set of digits"),
])
def test_knowable_problems_fail_before_anything_is_written(tmp_path, monkeypatch, capsys, args,
                                                           message):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr("benchmark.data.datasets.fashion_mnist.DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    # two seeds: before issue 18 these went through the runner, which recorded them as failed
    base = ["run", "--protocol", "smoke", "--model", "cnn9", "--regularizer", "weight_decay",
            "--set", "model.width=0.125", "--no-progress", "--seed", "0", "1"]
    results = tmp_path / "res"
    assert main([*base, *args, "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not results.exists()


def flaky_input(spec, results_dir, *, progress=True):
    """An input problem met only during set-up, fixed by the user before the rerun."""
    if os.environ.get("FLAKY_INPUT") == "broken":
        raise ConfigError("dataset files damaged")
    return fake_train(spec, results_dir, progress=progress)


def test_failure_caused_by_the_input_reruns_without_retry_failed(tmp_path, fake_env, monkeypatch):
    specs = make_specs(n_seeds=1, regularizers=("weight_decay",))
    monkeypatch.setenv("FLAKY_INPUT", "broken")
    assert not run_suite(specs, tmp_path, train_fn=flaky_input, progress=False).ok
    record = load_record(record_path(tmp_path, specs[0].run_id))
    assert record["status"] == "failed" and record["cause"] == "input"
    monkeypatch.setenv("FLAKY_INPUT", "fixed")
    summary = run_suite(specs, tmp_path, train_fn=flaky_input, progress=False)
    assert summary.ok and summary.executed == {specs[0].run_id: "complete"}

    # A record written before ``cause`` existed: the reason says it was the input.
    old = {k: v for k, v in record.items() if k != "cause"}
    old["reason"] = "runner: ConfigError: cifar10 not found or corrupted under data"
    records.write_json_atomic(record_path(tmp_path, specs[0].run_id), old)
    assert run_suite(specs, tmp_path, train_fn=flaky_input, progress=False).executed == {
        specs[0].run_id: "complete"}


# --------------------------------------------------------------------------------------------
# M6: the umask


def test_files_honour_the_umask(tmp_path, fake_env):
    old = os.umask(0o002)
    try:
        specs = make_specs(n_seeds=1, regularizers=("weight_decay",))
        run_suite(specs, tmp_path, train_fn=fake_train, progress=False)
        records.atomic_write(checkpoint_path(tmp_path, "x"), b"ck")
    finally:
        os.umask(old)
    for path in (record_path(tmp_path, specs[0].run_id), checkpoint_path(tmp_path, "x"),
                 lock_path(tmp_path, specs[0].run_id)):
        assert oct(path.stat().st_mode & 0o777) == oct(0o664), path


# --------------------------------------------------------------------------------------------
# Low: strict JSON and YAML


def test_non_finite_numbers_are_null_in_the_file_and_restored_on_load(tmp_path):
    path = tmp_path / "r.json"
    # a record of today's format (one with no version is not read: see test_store)
    rec = {k: None for k in records.REQUIRED_FIELDS + records.FIELDS_SINCE_2} | {
        "schema_version": records.SCHEMA_VERSION, "status": "diverged",
        "final": {"train_loss": math.nan, "test_acc": 10.0},
        "curves": {"train_loss": [1.0, math.inf]}, "median_step_ms": -math.inf}
    records.write_json_atomic(path, rec)
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert json.loads(text)["non_finite"] == {"final.train_loss": "nan", "curves.train_loss[1]": "inf",
                                              "median_step_ms": "-inf"}
    back = load_record(path)
    assert math.isnan(back["final"]["train_loss"]) and back["curves"]["train_loss"] == [1.0, math.inf]
    assert back["median_step_ms"] == -math.inf
    path.write_text(json.dumps({**rec, "final": {"train_loss": math.nan}}))  # an older record
    assert math.isnan(load_record(path)["final"]["train_loss"])


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("iterations: 10\niterations: 20\n", "duplicate key 'iterations' (line 2)"),
    ("optimizer: {lr: .inf}\n", "field 'optimizer.lr' must be a finite number"),
    ("optimizer: {lr: .nan}\n", "field 'optimizer.lr' must be a finite number"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_strict_protocol_yaml(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_protocol(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_non_finite_set_values_and_suite_duplicates_refused(tmp_path):
    with pytest.raises(ConfigError, match="--set optimizer.lr: must be a finite number"):
        parse_set(["optimizer.lr=inf"])
    from benchmark.suites import load_suite

    path = tmp_path / "s.yaml"
    path.write_text("protocol: smoke\ndatasets: [digits]\ndatasets: [synthetic]\nmodels: [cnn9]\n"
                    "regularizers: [weight_decay]\nseeds: 1\n")
    with pytest.raises(ConfigError, match="duplicate key 'datasets'"):
        load_suite(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_suite(path)


# --------------------------------------------------------------------------------------------
# Low: full disk


def test_full_disk_stops_the_sweep_instead_of_failing_every_run(tmp_path, fake_env, monkeypatch):
    """A write wrapper: after a few files, every fsync raises ENOSPC (as a full disk would)."""
    specs = make_specs()
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 3:  # run 1: checkpoint + record; run 2: checkpoint, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(records.os, "fsync", fsync)
    with pytest.raises(DiskFull, match="disk full writing"):
        run_suite(specs, tmp_path, train_fn=fake_train, progress=False)
    monkeypatch.setattr(records.os, "fsync", real_fsync)
    states = [load_record(record_path(tmp_path, s.run_id)) for s in specs]
    assert [r["status"] if r else None for r in states] == ["complete"] + [None] * 5
    assert not list(tmp_path.rglob("*.tmp")) and held_locks(tmp_path) == []
    assert run_suite(specs, tmp_path, train_fn=fake_train, progress=False).ok  # space freed


def test_full_disk_is_one_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    from benchmark.sweep import dispatch

    def full(*a, **k):
        raise DiskFull("disk full writing 'x.json'")

    monkeypatch.setattr(dispatch, "run_suite", full)
    assert main([*SINGLE, "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: disk full writing 'x.json'") and "\n" not in err


# --------------------------------------------------------------------------------------------
# Low: checkpoints carry their run ids; corrupt ones are named


def tiny(seed=0, **over):
    return tiny_spec("weight_decay", seed, **{
        "iterations": 8, "eval_every": 4, "checkpoint_every": 4, "schedule.milestones": [4],
        "data.max_train": 64, "data.max_test": 32, **over})


@pytest.mark.slow
def test_foreign_and_corrupt_checkpoints_are_refused_by_name(tmp_path):
    from benchmark.training import train

    a, b = tiny(seed=0), tiny(seed=1)
    assert train(a, tmp_path, progress=False, stop_after=4) == {}
    checkpoint_path(tmp_path, a.run_id).rename(checkpoint_path(tmp_path, b.run_id))  # renamed
    summary = run_suite([b], tmp_path, progress=False)
    record = load_record(record_path(tmp_path, b.run_id))
    assert not summary.ok and record["status"] == "failed" and record["cause"] == "input"
    assert f"checkpoints/{b.run_id}.pt' belongs to run(s) {a.run_id}" in record["reason"]
    checkpoint_path(tmp_path, b.run_id).write_bytes(b"\x00garbage")  # corrupt
    run_suite([b], tmp_path, progress=False)
    reason = load_record(record_path(tmp_path, b.run_id))["reason"]
    assert f"checkpoints/{b.run_id}.pt' cannot be read" in reason and "\n" not in reason
    checkpoint_path(tmp_path, b.run_id).unlink()  # the fix: no --retry-failed needed
    assert run_suite([b], tmp_path, progress=False).ok


# --------------------------------------------------------------------------------------------
# Low: a lock file deleted mid-run; orphaned pack checkpoints


@pytest.mark.slow
def test_lock_file_deleted_mid_run_never_gives_two_writers(tmp_path):
    """Process A runs; someone deletes its lock file; process B (here: another lock object)
    takes a lock on the new file. A notices before writing its record and leaves it to B."""
    from benchmark import training as engine

    spec = tiny(seed=2)
    other: list[filelock.FileLock] = []

    def train_while_lock_is_stolen(s, results_dir, progress=False):
        lock_path(results_dir, s.run_id).unlink()
        thief = filelock.FileLock(str(lock_path(results_dir, s.run_id)), timeout=0,
                                  thread_local=False)
        thief.acquire()
        other.append(thief)
        return engine.train(s, results_dir, progress=progress)

    outcome = try_run(spec, tmp_path, train_while_lock_is_stolen, retry_failed=False, seen=None)
    assert outcome == "busy" and not record_path(tmp_path, spec.run_id).exists()
    other[0].release()
    assert run_suite([spec], tmp_path, progress=False).ok


def test_orphaned_pack_checkpoints_are_removed(tmp_path, fake_env):
    specs = make_specs(n_seeds=2, regularizers=("weight_decay",))
    run_suite(specs, tmp_path, train_fn=fake_train, progress=False)
    done = tmp_path / "checkpoints" / "pack-0123456789abcdef.pt"
    torch.save({"run_ids": [s.run_id for s in specs], "iteration": 4, "run": {}}, done)
    live = tmp_path / "checkpoints" / "pack-fedcba9876543210.pt"
    torch.save({"run_ids": [specs[0].run_id, "0000000000000000"], "iteration": 4, "run": {}}, live)
    run_suite(specs, tmp_path, train_fn=fake_train, progress=False)
    assert not done.exists() and live.exists()


# --------------------------------------------------------------------------------------------
# M1: numerics do not depend on --jobs; packing is not mixed in a cell


def test_resuming_a_cell_with_other_packing_is_refused(tmp_path, fake_env):
    specs = make_specs(n_seeds=3, regularizers=("weight_decay",))
    run_suite(specs[:1], tmp_path, train_fn=fake_train, progress=False)  # unpacked seed 0
    with pytest.raises(ConfigError, match="trained with --pack-seeds 1, this call would add runs "
                                          "with --pack-seeds 2"):
        run_suite(specs, tmp_path, pack_seeds=2, progress=False)
    assert len(starts(fake_env)) == 1  # nothing ran


def test_workers_get_no_thread_count_from_jobs(tmp_path, monkeypatch):
    from benchmark.sweep.local import Workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = Workers(2, FAKE, False, devices=[])._env(None)
    assert "OMP_NUM_THREADS" not in env


@pytest.mark.slow
def test_jobs_1_and_2_give_the_same_numbers_and_record_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = tiny(seed=4)
    run_suite([spec], tmp_path / "j1", progress=False, jobs=1)
    run_suite([spec], tmp_path / "j2", progress=False, jobs=2)
    a, b = (load_record(record_path(tmp_path / d, spec.run_id)) for d in ("j1", "j2"))
    assert a["runtime"]["threads"] == b["runtime"]["threads"] == len(os.sched_getaffinity(0))
    assert a["curves"]["train_loss"] == b["curves"]["train_loss"] and a["final"] == b["final"]


# --------------------------------------------------------------------------------------------
# Kill -9 loop with packed seeds and the real engine

PACKED_RUNNER = """
import sys
from tests.benchmark.test_reliability import packed_specs
from benchmark.sweep import run_suite
print(run_suite(packed_specs(), sys.argv[1], pack_seeds=2, jobs=int(sys.argv[2]), progress=False,
                poll_s=0.05))
"""


def packed_specs() -> list[RunSpec]:
    return [tiny(seed=s, iterations=24, checkpoint_every=4, eval_every=8,
                 **{"schedule.milestones": [16]}) for s in (0, 1)]


@pytest.mark.slow
def test_kill_minus_9_loop_with_packed_seeds_equals_undisturbed(tmp_path):
    """--pack-seeds 2 (in-process, then workers) killed with SIGKILL at random moments and
    restarted: the records equal those of an undisturbed packed sweep, no checkpoint left."""
    import random

    rng = random.Random(18)
    results = tmp_path / "res"
    kills = 0
    for jobs in (1, 2, 1):
        proc = cli_process([str(results), str(jobs)], tmp_path / "unused.log", 0, script=PACKED_RUNNER)
        wait_for(lambda p=proc: p.poll() is not None or any((results / "checkpoints").glob("pack-*.pt"))
                 or any(results.glob("*.json")), timeout=300)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    proc = cli_process([str(results), "1"], tmp_path / "unused.log", 0, script=PACKED_RUNNER)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "2 runs: 2 done" in out, err
    assert kills >= 1
    run_suite(packed_specs(), tmp_path / "undisturbed", pack_seeds=2, progress=False)
    for spec in packed_specs():
        a = load_record(record_path(results, spec.run_id))
        b = load_record(record_path(tmp_path / "undisturbed", spec.run_id))
        assert a["curves"]["train_loss"] == b["curves"]["train_loss"] and a["final"] == b["final"]
        assert a["runtime"]["pack_seeds"] == 2
    assert list((results / "checkpoints").iterdir()) == []
