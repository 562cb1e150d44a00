"""The command line's success paths: what a user sets reaches the record; --jobs 0 pins GPUs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmark.cli import main
from benchmark.config import RunSpec
from benchmark.sweep import run_suite
from tests.helpers import fake_train, make_specs


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))
            if "store" not in p.parts and "logs" not in p.parts]


def test_single_run_settings_reach_the_record(tmp_path, capsys):
    results = tmp_path / "out"
    code = main(["run", "--protocol", "smoke", "--dataset", "digits", "--model", "cnn9",
                 "--regularizer", "rp_comhe", "--seed", "3", "--label", "RP-8",
                 "--set", "iterations=4", "--set", "eval_every=2", "--set", "checkpoint_every=2",
                 "--set", "schedule.milestones=[2]", "--set", "optimizer.lr=0.02",
                 "--set", "model.width=0.125", "--set", "reg.proj_dim=8",
                 "--set", "reg.num_projections=3", "--results", str(results), "--no-progress"])
    assert code == 0
    (record,) = _records(results)
    assert record["status"] == "complete" and record["seed"] == 3 and record["label"] == "RP-8"
    cfg = record["config"]
    assert cfg["model_kwargs"] == {"width": 0.125}
    # the identity holds the resolved hyper-parameters: what was set, and the defaults
    assert cfg["regularizer_hparams"]["proj_dim"] == 8 and cfg["regularizer_hparams"]["num_projections"] == 3
    assert cfg["regularizer_hparams"]["output_strength"] == 10
    assert record["regularizer_hparams_resolved"]["proj_dim"] == 8
    assert record["regularizer_hparams_resolved"]["num_projections"] == 3
    assert cfg["protocol"]["iterations"] == 4 and cfg["protocol"]["optimizer"]["lr"] == 0.02
    assert record["curves"]["iteration"] == [2, 4]
    assert record["run_id"] in capsys.readouterr().out


def env_train(spec: RunSpec, results_dir: Path, *, progress: bool = True) -> dict:
    """fake_train that also notes which GPU its worker process was given."""
    with open(os.environ["DEVICE_LOG"], "a") as f:
        f.write(f"{spec.run_id} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n")
    return fake_train(spec, results_dir, progress=progress)


def test_jobs_zero_gives_one_worker_per_gpu_each_pinned_to_its_own(tmp_path, monkeypatch):
    log = tmp_path / "devices.log"
    monkeypatch.setenv("DEVICE_LOG", str(log))
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "1.0")  # long enough for both workers to overlap
    specs = make_specs(n_seeds=2, regularizers=("weight_decay",))
    summary = run_suite(specs, tmp_path / "res", jobs=0, devices=["3", "5"], progress=False,
                        train_fn="tests.benchmark.test_cli_paths:env_train")
    assert summary.ok and len(summary.executed) == 2
    seen = dict(line.split() for line in log.read_text().splitlines())
    assert set(seen) == {s.run_id for s in specs}
    assert sorted(seen.values()) == ["3", "5"]  # one worker per listed GPU, never shared


def test_list_verbose_shows_hyperparameters_defaults_and_descriptions(capsys):
    assert main(["list", "regularizers", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "  rp_comhe\n      Random projections" in out
    assert "proj_dim (int, default 40)" in out and "num_projections (int, default 20)" in out
    assert main(["list", "datasets", "-v"]) == 0
    out = capsys.readouterr().out
    assert "  digits\n      scikit-learn's 1,797 8x8 digits" in out and "synthetic:<classes>" in out
    assert main(["list", "models", "-v"]) == 0
    assert "width (default 1.0)" in capsys.readouterr().out
