"""The validation split (data.validation, issue 24): fixed, stratified, held out of the training
set; runs on it are recorded under val_* names and never evaluate on the test set."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.data import datasets
from benchmark.config import ConfigError, Data, RunSpec, load_protocol
from benchmark.data.datasets.split import validation_indices
from benchmark.analysis.store import build_store
from benchmark.training import train, validate


def test_indices_stratified_exact_and_fixed():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = validation_indices(y, 10)
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 10
    assert torch.bincount(y[idx]).tolist() == [5, 3, 2]          # 10 x (0.5, 0.3, 0.2)
    assert torch.equal(idx, validation_indices(y, 10))           # no run seed: the same images
    # quotas that do not divide: the largest fractional parts get the remainder (sum exact)
    assert torch.bincount(y[validation_indices(y, 7)]).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4
    with pytest.raises(ConfigError, match="data.validation=100"):
        validation_indices(y, 100)


def test_load_holds_out_training_images_and_drops_the_test_set():
    full = datasets.load("digits", Data(image_size=16))
    ds = datasets.load("digits", Data(image_size=16, validation=300, max_test=5))
    assert ds.split == "validation" and full.split == "test"
    assert ds.test_x.shape[0] == 300 and ds.train_x.shape[0] == full.train_x.shape[0] - 300
    # train + validation is a partition of the original training set, in its order
    rows = {bytes(x.flatten().tolist()) + bytes([int(y)]) for x, y in zip(full.train_x, full.train_y)}
    for part_x, part_y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert all(bytes(x.flatten().tolist()) + bytes([int(y)]) in rows
                   for x, y in zip(part_x, part_y))
    assert ds.train_x.shape[0] + ds.test_x.shape[0] == full.train_x.shape[0]
    # what the run evaluates on is never a test image (digits' test images differ from training ones)
    test_rows = {bytes(x.flatten().tolist()) for x in full.test_x}
    assert not any(bytes(x.flatten().tolist()) in test_rows for x in ds.test_x)
    capped = datasets.load("digits", Data(image_size=16, validation=300, max_train=100))
    assert torch.equal(capped.test_x, ds.test_x) and capped.train_x.shape[0] == 100


def test_identity_unchanged_at_zero_and_split_off_by_validation():
    plain = load_protocol("smoke")
    assert "validation" not in plain.to_dict()["data"]  # existing run ids stand
    held = load_protocol("smoke", {"data.validation": 200})
    a = RunSpec(plain, "digits", "cnn9", "weight_decay", 0)
    b = RunSpec(held, "digits", "cnn9", "weight_decay", 0)
    assert a.run_id != b.run_id and b.identity()["protocol"]["data"]["validation"] == 200
    with pytest.raises(ConfigError, match="data.validation"):
        load_protocol("smoke", {"data.validation": -1})
    with pytest.raises(ConfigError, match="holds out all"):
        validate(RunSpec(load_protocol("smoke", {"data.validation": 1437}), "digits", "cnn9",
                         "weight_decay", 0))


def test_validation_run_has_no_test_evaluation(results_dir):
    proto = load_protocol("smoke", {"iterations": 6, "eval_every": 3, "checkpoint_every": 100,
                                    "schedule.milestones": [], "data.validation": 200, "data.max_train": 96})
    rec = train(RunSpec(proto, "digits", "cnn9", "weight_decay", 0, model_kwargs={"width": 0.125}),
                results_dir, progress=False)
    assert rec["status"] == "complete"
    assert rec["final"]["n_val"] == 200 and rec["final_val_correct"]["n"] == 200
    assert rec["final"]["val_error"] == pytest.approx(100 - rec["final"]["val_acc"])
    assert rec["curves"]["iteration"] == [3, 6] and len(rec["curves"]["val_error"]) == 2
    on_disk = json.loads((results_dir / f"{rec['run_id']}.json").read_text())
    for name in ("curves", "final"):
        assert not [k for k in on_disk[name] if k.startswith("test") or k == "n_test"], name
    assert "final_correct" not in on_disk
    skipped = []  # no test table can take a validation record for a test result
    runs, _ = build_store(results_dir, skipped)
    assert len(runs) == 0 and "validation-split record" in skipped[0][1]
