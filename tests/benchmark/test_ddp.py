"""DDP on the CPU: 2 processes over gloo (spawned here, no GPU) against one process, in float64.

Both sides train the SAME run (same run id: protocol, seed, global batch 16). BatchNorm: the run
asks for ``runtime.sync_bn``, so the 2-rank side normalises with the statistics of the whole
global batch (``GlobalBatchNorm``: all-reduced sums) and the one-process side with plain
BatchNorm over the same 16 images (sync_bn does nothing in one process): both compute the same
statistics, so the two runs agree to float64 rounding. A BN-free model would test less (the
cross-rank statistics are the part most easily got wrong).

One spawn runs three regularizers (torch's import is most of the cost):
  weight_decay: 2 ranks, stopped at a checkpoint, resumed by 2 ranks;
  rp_comhe:     1 process stops at a checkpoint, 2 ranks resume it (world size 1 -> 2);
  ap_comhe:     2 ranks stop at a checkpoint, 1 process resumes it (world size 2 -> 1);
each compared with an uninterrupted one-process run; and one imagenet run (the DataLoader stream
of a generated ImageFolder of JPEGs, weight_decay). Rank 1 may not write a file or a line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark import records
from benchmark.config import ConfigError, RunSpec, load_protocol
from benchmark.training import train, validate
from benchmark.training.distributed import sync_batchnorm
from tests.benchmark.test_imagenet import make_image_folder
from tests.helpers import subprocess_env


REGS = ("weight_decay", "rp_comhe", "ap_comhe")
STOP = {"weight_decay": 2, "rp_comhe": 2, "ap_comhe": 4}


def spec(regularizer: str, **over) -> RunSpec:
    proto = {"iterations": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 2,
             "schedule.milestones": [4], "data.max_train": 96, "data.max_test": 51,
             "runtime.precision": "fp64", "runtime.device": "cpu", "runtime.threads": 1,
             "runtime.sync_bn": True, **over}
    hp = {"proj_dim": 8, "num_projections": 3} if regularizer == "rp_comhe" else (
        {"proj_dim": 8} if regularizer == "ap_comhe" else {})
    return RunSpec(load_protocol("smoke", proto), "digits", "cnn9", regularizer, 5,
                   model_kwargs={"width": 0.125}, regularizer_hparams=hp)


def imagenet_spec() -> RunSpec:
    """A run of the file-backed stream (a generated ImageFolder of JPEGs), batch 4 = 2 x 2."""
    proto = load_protocol("imagenet_resnet", {
        "iterations": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2,
        "schedule.milestones": [3], "data.image_size": 32, "runtime.device": "cpu",
        "runtime.threads": 1, "runtime.loader_workers": 1, "runtime.precision": "fp64",
        "runtime.sync_bn": True})
    return RunSpec(proto, "imagenet", "cnn9", "weight_decay", 5, model_kwargs={"width": 0.125})


def _rank_main(rank: int, store: str, results: str, errors: str) -> None:
    """One rank: every regularizer's part of the DDP side (see the module docstring)."""
    out = io.StringIO()
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        if rank != 0:  # rank 1 must not write: any file write of the engine fails the test
            def refuse(*a, **k):
                raise AssertionError(f"rank 1 wrote {a[0] if a else ''}")
            records.atomic_write = refuse
            records.write_json_atomic = refuse
        with contextlib.redirect_stdout(out):
            for reg in REGS:
                s = spec(reg)
                if reg == "weight_decay":
                    assert train(s, results, progress=True, stop_after=STOP[reg]) == {}
                if reg == "ap_comhe":
                    assert train(s, results, progress=True, stop_after=STOP[reg]) == {}
                    continue
                rec = train(s, results, progress=True)
                assert rec["distributed"]["world_size"] == 2
            rec = train(imagenet_spec(), results, progress=True)
            assert rec["distributed"]["world_size"] == 2
        if rank != 0:
            assert out.getvalue() == "", f"rank 1 printed: {out.getvalue()[:200]!r}"
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - report to the parent, which fails the test
        with open(f"{errors}.{rank}", "w") as f:
            f.write(traceback.format_exc())
        raise


def _close(a, b, what, rel=1e-10):
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=rel, abs=1e-12), what


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_checkpoints_and_resumes(tmp_path, monkeypatch):
    ddp_dir, ref_dir = tmp_path / "ddp", tmp_path / "ref"
    make_image_folder(tmp_path / "data")
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))  # the ranks inherit it
    # world 1 -> 2: one process writes rp_comhe's checkpoint first
    assert train(spec("rp_comhe"), ddp_dir, progress=False, stop_after=STOP["rp_comhe"]) == {}
    errors = str(tmp_path / "errors")
    try:
        mp.spawn(_rank_main, args=(str(tmp_path / "store"), str(ddp_dir), errors), nprocs=2)
    except Exception:  # noqa: BLE001 - the rank's own traceback says more
        logs = [open(f"{errors}.{r}").read() for r in (0, 1) if os.path.exists(f"{errors}.{r}")]
        pytest.fail("\n".join(logs) or "a rank failed")
    # world 2 -> 1: this process finishes ap_comhe from the 2-rank checkpoint
    rec_ap = train(spec("ap_comhe"), ddp_dir, progress=False)
    assert rec_ap["distributed"]["world_sizes"] == [2, 1]
    for reg in REGS:
        s = spec(reg)
        ref = train(s, ref_dir, progress=False)
        got = json.loads(records.record_path(ddp_dir, s.run_id).read_text())
        assert got["status"] == ref["status"] == "complete"
        assert got["curves"]["iteration"] == ref["curves"]["iteration"] == [3, 6]
        # the window sums of the loss curves are float32 (loop.py), and a rank sums its shard's CE
        # before the mean over ranks: equal to float32 rounding; the weights (energies) to 1e-10
        for key in ("train_loss", "penalty"):
            _close(got["curves"][key], ref["curves"][key], f"{reg} {key}", rel=1e-6)
        for key in ("test_acc", "energy_total"):
            _close(got["curves"][key], ref["curves"][key], f"{reg} {key}")
        for name, values in ref["curves"]["energy"].items():
            _close(got["curves"]["energy"][name], values, f"{reg} energy {name}")
        assert got["final"]["n_test"] == 51 and got["final_correct"] == ref["final_correct"]
        d = got["distributed"]
        assert d["world_sizes"] == {"weight_decay": [2, 2], "rp_comhe": [1, 2],
                                    "ap_comhe": [2, 1]}[reg]
        if reg != "ap_comhe":
            assert (d["world_size"], d["nodes"], d["backend"], d["per_rank_batch"]) == (2, 1, "gloo", 8)
        assert ref["distributed"] == {"world_size": 1, "nodes": 1, "backend": None,
                                      "per_rank_batch": 16, "world_sizes": [1]}
    # the DataLoader stream of an ImageFolder: each rank decodes its half of every batch
    s = imagenet_spec()
    ref = train(s, ref_dir, progress=False)
    got = json.loads(records.record_path(ddp_dir, s.run_id).read_text())
    assert got["distributed"]["per_rank_batch"] == 2 and got["final"]["n_test"] == 9
    _close(got["curves"]["train_loss"], ref["curves"]["train_loss"], "imagenet loss", rel=1e-6)
    _close(got["curves"]["energy_total"], ref["curves"]["energy_total"], "imagenet energy")
    assert got["final_correct"] == ref["final_correct"]
    assert not list((ddp_dir / "checkpoints").glob("*.pt"))


def test_world_size_that_does_not_divide_the_batch_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"^batch_size 16 \(the global batch\) does not divide "
                                          r"by the world size 3; allowed world sizes: 1, 2, 4, 8, 16$"):
        validate(spec("weight_decay"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    validate(spec("weight_decay"))
    with pytest.raises(ConfigError, match="runtime.compile 'graph' is not supported with 2"):
        validate(spec("weight_decay", **{"runtime.compile": "graph"}))
    with pytest.raises(ConfigError, match="drop_last"):
        validate(spec("weight_decay", **{"data.drop_last": False}))


def test_sync_bn_and_loader_workers_at_default_keep_run_ids():
    plain = RunSpec(load_protocol("smoke"), "digits", "cnn9", "weight_decay", 0)
    assert "sync_bn" not in plain.identity()["protocol"]["runtime"]
    assert "loader_workers" not in plain.identity()["protocol"]["runtime"]
    synced = RunSpec(load_protocol("smoke", {"runtime.sync_bn": True}), "digits", "cnn9",
                     "weight_decay", 0)
    assert synced.identity()["protocol"]["runtime"]["sync_bn"] is True
    assert synced.run_id != plain.run_id


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.1)).double()
    ref = torch.nn.BatchNorm2d(3, momentum=0.1).double()
    glob = sync_batchnorm(bn, cuda=False)
    assert type(glob[0]).__name__ == "GlobalBatchNorm"
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(glob(x), ref(x))
    torch.testing.assert_close(glob[0].running_var, ref.running_var)


@pytest.mark.slow
def test_torchrun_cli_trains_one_run_with_two_processes(tmp_path):
    """``torchrun --nproc-per-node 2 -m benchmark run ...``: one record, written by rank 0, that
    says how it ran; a second call finds it finished."""
    results = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(29500 + os.getpid() % 1000), "-m", "benchmark", "run",
           "--protocol", "smoke", "--dataset", "digits", "--model", "cnn9",
           "--regularizer", "rp_comhe", "--set", "model.width=0.125",
           "--set", "runtime.device=cpu", "--set", "runtime.threads=1",
           "--set", "runtime.sync_bn=true", "--results", str(results), "--no-progress"]
    env = subprocess_env()
    for attempt in ("run now", "already recorded"):
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [ln for ln in done.stdout.splitlines() if "complete (" in ln]
        assert len(lines) == 1 and f"complete ({attempt})" in lines[0], done.stdout
        starts = [ln for ln in done.stdout.splitlines() if "iteration 0:" in ln]
        assert len(starts) == (1 if attempt == "run now" else 0), done.stdout  # rank 0 only
    (path,) = records.record_files(results)
    rec = json.loads(path.read_text())
    assert rec["distributed"] == {"world_size": 2, "nodes": 1, "backend": "gloo",
                                  "per_rank_batch": 16, "world_sizes": [2]}


def test_warmup_is_an_option_that_leaves_old_run_ids_alone():
    p = load_protocol("imagenet_resnet", {"schedule.warmup_iterations": 4, "iterations": 20,
                                          "schedule.milestones": [10]})
    assert [p.lr_at(i) for i in (0, 1, 3, 4, 9)] == [0.025, 0.05, 0.1, 0.1, 0.1]
    assert p.lr_at(10) == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="schedule.warmup_iterations"):
        load_protocol("smoke", {"schedule.warmup_iterations": 12})
    with pytest.raises(ConfigError, match="needs runtime.compile other than 'graph'"):
        load_protocol("smoke", {"schedule.warmup_iterations": 2, "runtime.compile": "graph"})
    plain = RunSpec(load_protocol("smoke"), "digits", "cnn9", "weight_decay", 0)
    assert "warmup_iterations" not in plain.identity()["protocol"]["schedule"]
