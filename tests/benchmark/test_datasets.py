"""The dataset registry: a new dataset is one file and one decorator."""

import os
import textwrap

import pytest
import torch

from benchmark.data import datasets
from benchmark.config import ConfigError, Data, RunSpec, load_protocol
from benchmark.data.datasets import registry
from benchmark.suites import load_suite
from benchmark.training import train


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test disappear after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _write_dataset_file(path, name="stripes", offline=True, classes=3):
    path.write_text(textwrap.dedent(f'''
        import torch
        from benchmark.data.datasets import Dataset, register_dataset

        @register_dataset("{name}", num_classes={classes}, offline={offline},
                          description="horizontal vs vertical stripes, 12x12")
        def stripes(arg, cfg):
            g = torch.Generator().manual_seed(0)
            def make(n):
                y = torch.randint(0, {classes}, (n,), generator=g)
                x = torch.zeros(n, 1, 12, 12, dtype=torch.uint8)
                x[y == 0, :, ::2, :] = 255
                x[y == 1, :, :, ::2] = 255
                return x, y
            (xtr, ytr), (xte, yte) = make(96), make(24)
            return Dataset("{name}", xtr, ytr, xte, yte, num_classes={classes})
    '''))


def test_builtin_datasets_and_their_offline_stand_ins():
    assert datasets.available() == ["cifar10", "cifar100", "digits", "fashion_mnist", "imagenet",
                                    "modelnet40", "synthetic", "synthetic_shapes"]
    assert datasets.offline_stand_in("imagenet") == "synthetic:1000"
    assert datasets.offline_stand_in("modelnet40") == "synthetic_shapes"  # point clouds for points
    assert datasets.offline_stand_in("cifar100") == "synthetic:100"
    assert datasets.offline_stand_in("cifar10") == "synthetic:10"
    assert datasets.offline_stand_in("fashion_mnist") == "synthetic:10"
    assert datasets.offline_stand_in("digits") == "digits"
    assert datasets.offline_stand_in("synthetic:7") == "synthetic:7"


def test_unknown_names_and_arguments_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar-100'; did you mean 'cifar100'.*"
                                          r"\(available: cifar10, .*synthetic:<classes>.*\)"):
        datasets.check_name("cifar-100")
    for bad in ("digits:3", "synthetic:1", "synthetic:x"):
        with pytest.raises(ConfigError, match="synthetic:<classes>") as exc:
            datasets.check_name(bad)
        assert "\n" not in str(exc.value)


def test_a_dataset_from_one_file_trains_end_to_end(tmp_path, clean_registry):
    """One file with one decorator (loaded like a plugin) is enough: suites, stand-ins, runs."""
    import importlib.util

    path = tmp_path / "stripes_dataset.py"
    _write_dataset_file(path, offline=False)
    spec = importlib.util.spec_from_file_location("stripes_dataset", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    assert "stripes" in datasets.available()
    assert datasets.offline_stand_in("stripes") == "synthetic:3"  # derived, not listed anywhere
    ds = datasets.load("stripes", Data(image_size=24))
    assert ds.train_x.shape == (96, 1, 24, 24) and ds.num_classes == 3  # 12 -> 24 upsampled

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text("protocol: smoke\ndatasets: [stripes]\nmodels: [{name: cnn9, kwargs: "
                          "{width: 0.125}}]\nregularizers: [weight_decay]\nseeds: 1\n")
    assert [s.dataset for s in load_suite(suite_file).expand()] == ["stripes"]
    assert [s.dataset for s in load_suite(suite_file, profile="smoke").expand()] == ["synthetic:3"] * 2

    proto = load_protocol("smoke", {"iterations": 4, "eval_every": 4, "batch_size": 16,
                                    "schedule.milestones": [], "data.max_train": 0,
                                    "data.max_test": 0})
    rec = train(RunSpec(proto, "stripes", "cnn9", "weight_decay", 0, model_kwargs={"width": 0.125}),
                tmp_path / "runs", progress=False)
    assert rec["status"] == "complete" and rec["final"]["n_test"] == 24


def test_registering_a_taken_name_with_another_loader_fails(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        datasets.register_dataset("digits", num_classes=10, offline=True, description="x")(
            lambda arg, cfg: None)


def test_synthetic_images_follow_the_protocol_size():
    ds = datasets.load("synthetic:4", Data(image_size=16, max_train=8, max_test=4))
    assert ds.train_x.shape == (8, 3, 16, 16) and ds.synthetic and ds.num_classes == 4
    assert int(ds.train_y.max()) < 4 and ds.train_x.dtype == torch.uint8


def test_preflight_rejects_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    monkeypatch.setattr("benchmark.data.datasets.fashion_mnist.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"^cifar100 not found under .*cifar-100-python \(missing train\)"):
        datasets.preflight("cifar100", Data(), 128)
    with pytest.raises(ConfigError, match=r"^fashion_mnist not found under .*missing train-images"):
        datasets.preflight("fashion_mnist", Data(), 128)
    with pytest.raises(ConfigError, match=r"images are 28x28, larger than data.image_size=16"):
        datasets.preflight("fashion_mnist", Data(image_size=16), 128)
    with pytest.raises(ConfigError, match=r"batch_size 2000 is larger than the training set of digits"):
        datasets.preflight("digits", Data(), 2000)
    datasets.preflight("digits", Data(), 32)  # fine: nothing raised, nothing loaded
    monkeypatch.setenv("COMHE_DOWNLOAD", "1")
    datasets.preflight("cifar100", Data(), 128)  # may be downloaded: not missing


def test_two_unpackers_at_once_do_not_move_each_others_files(tmp_path, monkeypatch):
    """Two sweep workers unpacking Fashion-MNIST's .gz files at the same moment (seen in a real
    sweep: FileNotFoundError on a shared '.tmp' name): while one copies, the other unpacks the
    same file completely; the first must still finish, and the file is whole."""
    import gzip
    import shutil

    from benchmark.data.datasets import fashion_mnist

    src = tmp_path / "gz"
    src.mkdir()
    payload = bytes(range(256)) * 64
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(payload)
    copy, inner = shutil.copyfileobj, []

    def racing_copy(a, b, *args):
        if not inner:  # the other worker runs to completion in the middle of this copy
            inner.append(True)
            fashion_mnist.unpack_idx_gz([src], tmp_path / "data")
        return copy(a, b, *args)

    monkeypatch.setattr(fashion_mnist.shutil, "copyfileobj", racing_copy)
    target = tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    # the first worker saw no target yet (it checked before the other finished)
    monkeypatch.setattr(fashion_mnist.Path, "exists", lambda self: False if self == target else
                        os.path.exists(self))
    fashion_mnist.unpack_idx_gz([src], tmp_path / "data")
    assert target.read_bytes() == payload
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left
