"""The file-backed ``imagenet`` dataset on a tiny generated ImageFolder of JPEG files."""

from __future__ import annotations

import pytest
import torch

from benchmark.data import datasets
from benchmark.config import ConfigError, RunSpec, load_protocol
from benchmark.data.images import scale_input
from benchmark.data.datasets.folders import even_subset
from benchmark.data.files import FileBatchStream, eval_batches
from benchmark.suites import load_suite
from benchmark.training import train, validate
from tests.helpers import IMAGE_FOLDER_CLASSES as CLASSES, make_image_folder

@pytest.fixture
def folder(tmp_path, monkeypatch):
    make_image_folder(tmp_path)
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    return tmp_path


def proto(**over):
    return load_protocol("imagenet_resnet", {
        "iterations": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2,
        "schedule.milestones": [3], "data.image_size": 32, "runtime.device": "cpu",
        "runtime.threads": 1, "runtime.loader_workers": 1, "runtime.precision": "fp64", **over})


def test_missing_folders_fail_before_the_run_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    spec = RunSpec(proto(), "imagenet", "cnn9", "weight_decay", 0, model_kwargs={"width": 0.125})
    with pytest.raises(ConfigError) as err:
        validate(spec)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"imagenet not found: no {tmp_path}/imagenet/val/")
    with pytest.raises(ConfigError, match="imagenet not found"):
        datasets.load("imagenet", proto().data)


def test_loader_reads_the_folders(folder):
    ds = datasets.load("imagenet", proto().data)
    assert ds.num_classes == 3 and ds.classes == list(CLASSES)
    assert len(ds.train_samples) == 24 and ds.test_y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    capped = datasets.load("imagenet", proto(**{"data.max_train": 6}).data)
    assert sorted({c for _, c in capped.train_samples}) == [0, 1, 2]  # spread over classes
    assert even_subset(list(range(10)), 5) == [0, 2, 4, 6, 8]


def batches(ds, cfg, rank=0, world=1, workers=0, count=8, state=None, batch=4):
    s = FileBatchStream(ds, batch, 7, cfg, torch.device("cpu"), rank, world, workers)
    if state:
        s.load_state_dict(state)
    return [s.next() for _ in range(count)], s


def test_stream_is_seeded_per_image_sharded_and_resumable(folder):
    cfg = proto().data
    ds = datasets.load("imagenet", cfg)
    one, stream = batches(ds, cfg)  # 8 batches: two epochs of 6 cross
    assert stream.state_dict() == {"epoch": 1, "position": 2}
    x, y = one[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and y.shape == (4,)
    # the tensor stream's order formula: the first batch is the first 4 of the seeded randperm
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(7 * 1_000_003))
    assert y.tolist() == [ds.train_samples[i][1] for i in perm[:4].tolist()]
    workers, _ = batches(ds, cfg, workers=2)  # other worker processes: the same images
    for (a, b), (c, d) in zip(one, workers):
        assert torch.equal(a, c) and torch.equal(b, d)
    halves = [batches(ds, cfg, rank=r, world=2)[0] for r in (0, 1)]
    for k, (a, b) in enumerate(one):  # rank 0's slice then rank 1's: the one-process batch
        assert torch.equal(torch.cat([halves[0][k][0], halves[1][k][0]]), a)
        assert torch.equal(torch.cat([halves[0][k][1], halves[1][k][1]]), b)
    later, _ = batches(ds, cfg, count=3, state={"epoch": 0, "position": 5})
    for (a, b), (c, d) in zip(one[5:], later):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert not torch.equal(one[0][0], one[6][0])  # a new epoch, a new order and new crops


def test_eval_batches_centre_crop_any_range(folder):
    cfg = proto().data
    ds = datasets.load("imagenet", cfg)
    of = eval_batches(ds, cfg, torch.device("cpu"))
    whole = torch.cat([x for x, _ in of(0, 9)])
    assert whole.shape == (9, 3, 32, 32)
    assert torch.equal(torch.cat([x for x, _ in of(4, 9)]), whole[4:])
    assert list(of(5, 5)) == []


def test_imagenet_scaling_uses_the_channel_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = scale_input(x, "imagenet")
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229,
                                                               (1 - 0.456) / 0.224,
                                                               (1 - 0.406) / 0.225]))


def test_a_run_on_the_generated_folder_completes_and_resumes(folder, tmp_path):
    spec = RunSpec(proto(), "imagenet", "cnn9", "rp_comhe", 0, model_kwargs={"width": 0.125},
                   regularizer_hparams={"proj_dim": 8, "num_projections": 2})
    full = train(spec, tmp_path / "full", progress=False)
    assert full["status"] == "complete" and full["final"]["n_test"] == 9
    assert full["curves"]["iteration"] == [2, 4] and len(full["final_correct"]) > 0
    part = tmp_path / "part"
    assert train(spec, part, progress=False, stop_after=2) == {}
    resumed = train(spec, part, progress=False)
    assert resumed["curves"]["train_loss"] == full["curves"]["train_loss"]
    assert resumed["curves"]["energy_total"] == full["curves"]["energy_total"]
    assert resumed["final"] == full["final"]


def test_suite_imagenet_checks_before_any_run(folder):
    specs = load_suite("imagenet").expand()  # every run validated (meta-device forward at 224)
    assert len(specs) == 36 and {s.protocol.name for s in specs} == {"imagenet_resnet"}
    assert {s.model for s in specs} == {"timm:resnet18", "timm:resnet34", "timm:resnet50"}
    assert {s.regularizer for s in specs} == {"weight_decay", "so", "mhe", "hs_mhe", "rp_comhe",
                                              "ap_comhe"}
    assert all(s.model_kwargs == {"cifar_stem": False, "zero_init_last": False} for s in specs)
    smoke = load_suite("imagenet", profile="smoke").expand()
    assert {s.dataset for s in smoke} == {"synthetic:1000"}
