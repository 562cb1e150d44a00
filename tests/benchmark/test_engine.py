"""End-to-end runs of the training engine on the CPU, on tiny offline data."""

import json
import pickle

import numpy as np
import pytest
import torch

from benchmark import records
from benchmark.config import ConfigError, RunSpec, load_protocol
from benchmark.training import train, validate
from tests.helpers import tiny_spec


def spec(dataset="digits", regularizer="rp_comhe", seed=0, hparams=None, **proto):
    return tiny_spec(regularizer, seed, dataset=dataset, hparams=hparams,
                     **{"iterations": 10, "eval_every": 5, "checkpoint_every": 4, **proto})


def test_record_has_every_field_and_curves(results_dir):
    rec = train(spec(), results_dir, progress=False)
    on_disk = json.loads(records.record_path(results_dir, rec["run_id"]).read_text())
    assert on_disk == json.loads(json.dumps(rec))
    for field in records.REQUIRED_FIELDS + ("started_at", "finished_at", "notes", "label"):
        assert field in rec, field
    assert rec["status"] == "complete" and rec["reason"] is None
    assert rec["curves"]["iteration"] == [5, 10]
    assert rec["final"]["iteration"] == 10 and rec["final"]["n_test"] == 256
    assert 0 <= rec["final"]["test_acc"] <= 100
    assert rec["final"]["test_error"] == pytest.approx(100 - rec["final"]["test_acc"])
    # The plain s=2 energy of every conv/linear weight (11 in CNN-9) is logged per evaluation.
    assert len(rec["curves"]["energy"]) == 11
    assert all(len(v) == 2 for v in rec["curves"]["energy"].values())
    assert rec["config"]["regularizer"] == "rp_comhe" and rec["seed"] == 0
    assert set(rec["versions"]) >= {"python", "torch", "torchvision", "timm"}
    assert rec["git"]["commit"] and rec["device"].startswith("cpu")
    # what explains a numerical difference between machines (benchmark/machine.py); not identity
    assert rec["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["machine"]["intra_op_threads"] >= 1 and "cuda_device" not in rec["machine"]
    assert "machine" not in json.dumps(rec["config"])
    assert rec["synthetic"] is False and rec["median_step_ms"] > 0
    assert not records.checkpoint_path(results_dir, rec["run_id"]).exists()
    assert not list(results_dir.rglob("*.tmp"))


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = train(spec(seed=1), tmp_path / "a", progress=False)
    b = train(spec(seed=1), tmp_path / "b", progress=False)
    c = train(spec(seed=2), tmp_path / "c", progress=False)
    assert a["curves"]["train_loss"] == b["curves"]["train_loss"]
    assert a["final"] == b["final"]
    assert a["curves"]["train_loss"] != c["curves"]["train_loss"]


@pytest.mark.parametrize("regularizer", ["rp_comhe", pytest.param("ap_comhe", marks=pytest.mark.slow), "srip"])
def test_interrupted_run_resumes_to_identical_metrics(tmp_path, regularizer):
    s = spec(regularizer=regularizer, seed=3)
    full = train(s, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    assert train(s, part, progress=False, stop_after=6) == {}
    ckpt = records.checkpoint_path(part, s.run_id)
    assert ckpt.exists() and not records.record_path(part, s.run_id).exists()
    torch.load(ckpt, weights_only=True)  # loadable without unpickling arbitrary objects
    resumed = train(s, part, progress=False)
    assert resumed["final"] == full["final"]
    assert resumed["curves"]["train_loss"] == full["curves"]["train_loss"]
    assert resumed["curves"]["energy_total"] == full["curves"]["energy_total"]
    # the record says that, and where, it resumed (checkpoint_every 4: the one at iteration 4)
    assert full["resumed_from"] == [] and resumed["resumed_from"] == [6]


@pytest.mark.parametrize("regularizer", [pytest.param("rp_comhe", marks=pytest.mark.slow),
                                         pytest.param("ap_comhe", marks=pytest.mark.slow), "srip"])
def test_graph_mode_run_and_resume_equal_the_eager_run(tmp_path, regularizer):
    """``runtime.compile: graph`` through the whole loop (on the CPU its body runs unrecorded):
    5 epochs of 4 batches, a rate change at 8, evaluations and checkpoints; then interrupted
    mid-epoch at 6 and resumed (the device batch counter must pick up at the stream's position).
    Same operations in the same order as the eager run: the records must be equal."""
    over = {"iterations": 20, "eval_every": 5, "checkpoint_every": 4, "data.max_train": 128}
    eager = train(spec(regularizer=regularizer, seed=3, **over, **{"runtime.compile": "off"}),
                  tmp_path / "eager", progress=False)
    s = spec(regularizer=regularizer, seed=3, **over, **{"runtime.compile": "graph"})
    graph = train(s, tmp_path / "graph", progress=False)
    assert graph["runtime"]["compile"] == "graph"
    part = tmp_path / "part"
    assert train(s, part, progress=False, stop_after=6) == {}
    resumed = train(s, part, progress=False)
    for rec in (graph, resumed):
        assert rec["final"] == eager["final"]
        for key in ("train_loss", "penalty", "test_acc", "energy_total"):
            assert rec["curves"][key] == eager["curves"][key], key


@pytest.mark.slow
def test_srip_schedule_follows_the_protocols_epochs_and_is_recorded(tmp_path):
    """The engine tells the regularizer the epoch of each step's batch (the data stream's:
    iteration // iterations per epoch); SRIP's released schedule drops x1e-3 at epoch 20. Here 2
    iterations per epoch (64 images, batch 32), so the drop comes at iteration 40; a run
    interrupted before it and resumed after it gives the uninterrupted record."""
    from benchmark.training import setup

    over = {"iterations": 44, "eval_every": 11, "checkpoint_every": 100, "data.max_train": 64,
            "batch_size": 32, "schedule.milestones": []}
    s = spec(regularizer="srip", seed=1, **over)
    run = setup(s)
    for it in range(42):
        run.step(s.protocol.lr_at(it))
        assert run.reg.epoch == it // 2
        assert run.reg.decay.item() == pytest.approx(1.0 if it < 40 else 1e-3, rel=1e-7), it
    full = train(s, tmp_path / "full", progress=False)
    assert full["regularizer_schedule"] == [{"epoch": 0, "iteration": 0, "multiplier": 1.0},
                                            {"epoch": 20, "iteration": 40, "multiplier": 1e-3}]
    assert full["regularizer_hparams_resolved"]["schedule"] == "released"
    pen = full["curves"]["penalty"]  # window means: the last window holds 4 steps at 1e-3
    assert pen[-1] < 0.7 * pen[-2]
    assert full["runtime"]["precision"] == "fp32" and full["runtime"]["tf32_matmul"] is False
    part = tmp_path / "part"
    assert train(s, part, progress=False, stop_after=30) == {}
    resumed = train(s, part, progress=False)
    assert resumed["curves"] == full["curves"] and resumed["final"] == full["final"]
    assert train(spec(**over), tmp_path / "rp", progress=False)["regularizer_schedule"] is None


def test_divergence_is_recorded_not_raised(results_dir):
    rec = train(spec(regularizer="weight_decay", **{"optimizer.lr": 1e6}), results_dir, progress=False)
    assert rec["status"] == "diverged"
    assert rec["reason"].startswith("non-finite loss at iteration")
    assert rec["final"]["iteration"] < 10


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "cifar1000"}, "unknown dataset 'cifar1000'; did you mean 'cifar100'"),
    ({"regularizer": "rp_comhee"}, "rp_comhe"),
    ({"hparams": {"proj_dimm": 3}}, "proj_dim"),
])
def test_bad_specs_fail_before_anything_is_written(results_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        train(spec(**kwargs), results_dir, progress=False)
    assert not results_dir.exists()


def test_unknown_model_fails_in_validation():
    s = RunSpec(load_protocol("smoke"), "digits", "cnn99", "weight_decay", 0)
    with pytest.raises(ConfigError, match=r"^unknown model 'cnn99'; did you mean 'cnn9'"):
        validate(s)


# -- real torchvision loaders on tiny generated files -----------------------------------------


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """Files in the exact cifar-10-batches-py / cifar-100-python layouts.

    torchvision checks md5 sums of the real archives; generated files cannot match, so the
    expected sums are set to None for this test only (the check stays on for real users).
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    rng = np.random.default_rng(0)

    def batch(n, key, classes):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                key: rng.integers(0, classes, n).tolist()}

    d10 = tmp_path / "cifar-10-batches-py"
    d10.mkdir()
    for name, _ in CIFAR10.train_list:
        pickle.dump(batch(40, "labels", 10), open(d10 / name, "wb"))
    pickle.dump(batch(50, "labels", 10), open(d10 / "test_batch", "wb"))
    pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(d10 / "batches.meta", "wb"))
    d100 = tmp_path / "cifar-100-python"
    d100.mkdir()
    pickle.dump(batch(200, "fine_labels", 100), open(d100 / "train", "wb"))
    pickle.dump(batch(50, "fine_labels", 100), open(d100 / "test", "wb"))
    pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, open(d100 / "meta", "wb"))
    for cls in (CIFAR10, CIFAR100):
        monkeypatch.setattr(cls, "train_list", [[n, None] for n, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[n, None] for n, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("dataset, classes", [("cifar10", 10), ("cifar100", 100)])
def test_end_to_end_on_cifar_format_files(tiny_cifar, results_dir, dataset, classes):
    s = RunSpec(load_protocol("smoke", {"iterations": 4, "eval_every": 2, "batch_size": 16,
                                         "schedule.milestones": []}),
                dataset, "cnn9", "hs_mhe", 0, model_kwargs={"width": 0.125})
    rec = train(s, results_dir, progress=False)
    assert rec["status"] == "complete" and rec["final"]["n_test"] == 50


def test_fashion_mnist_through_torchvision(tmp_path, monkeypatch):
    """Tiny idx files where torchvision's FashionMNIST looks (the Debian package's layout)."""
    from benchmark.config import Data
    from benchmark.data.datasets import load as load_dataset

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        path.write_bytes(header + arr.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    monkeypatch.setattr("benchmark.data.datasets.fashion_mnist.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    ds = load_dataset("fashion_mnist", Data())
    assert ds.train_x.shape == (64, 1, 32, 32) and ds.test_x.shape == (16, 1, 32, 32)
    # 28 -> 32 by zero padding: the border is empty, the centre is the original image.
    assert int(ds.train_x[:, :, :2].max()) == 0
