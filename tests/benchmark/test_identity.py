"""Run identity: resolved hyper-parameters, plugin source (issue 13 "stale identity")."""

from __future__ import annotations

import json
import os
import textwrap

from benchmark import records
from benchmark.config import load_protocol
from benchmark.sweep.status import format_status, suite_status
from tests.helpers import tiny_spec


def spec(reg="rp_comhe", hp=None, seed=0):
    return tiny_spec(reg, seed, hparams=hp, width=None)


def test_defaults_written_out_or_left_out_are_one_run():
    assert spec(hp={}).run_id == spec(hp={"proj_dim": 40}).run_id
    assert spec(hp={}).run_id != spec(hp={"proj_dim": 30}).run_id


def test_one_and_one_point_zero_are_one_run():
    assert spec(hp={"strength": 1}).run_id == spec(hp={"strength": 1.0}).run_id
    assert spec(hp={"strength": 2}).run_id == spec(hp={"strength": 2.0}).run_id
    assert spec(hp={"strength": 2}).run_id != spec(hp={"strength": 1}).run_id


def test_builtins_carry_no_source_hash():
    assert "regularizer_source" not in spec().identity()


PLUGIN = """
from regularizers import HParam, Regularizer, register
import torch

@register
class {cls}(Regularizer):
    name = "{name}"
    HPARAMS = {{"strength": HParam({default}, "float", 0.0)}}

    def penalty(self):
        return torch.zeros(())
"""


def _plugin(path, name, default):
    path.write_text(textwrap.dedent(PLUGIN.format(cls=name.title().replace("_", ""), name=name,
                                                  default=default)))
    import regularizers

    regularizers.load_plugin(str(path))


def test_an_edited_plugin_is_a_new_run_and_its_old_record_is_stale(tmp_path, monkeypatch):
    """A plugin's code or default could change and `status` still counted old records done."""
    plugin = tmp_path / "myreg_plugin.py"
    _plugin(plugin, "idtest_reg", 1.0)
    old = spec("idtest_reg")
    assert len(old.identity()["regularizer_source"]) == 16
    results = tmp_path / "res"
    records.write_json_atomic(records.record_path(results, old.run_id), {
        "schema_version": 1, "run_id": old.run_id, "status": "complete", "reason": None,
        "config": old.identity(), "seed": 0, "git": {}, "versions": {}, "device": "cpu",
        "synthetic": False, "wall_time_s": 1.0, "median_step_ms": 1.0, "curves": {},
        "final": {}})
    assert suite_status([old], results)["state"].tolist() == ["done"]
    old_id = old.run_id  # identity() follows the code loaded now: keep the old id
    st = os.stat(plugin)
    _plugin(plugin, "idtest_reg", 2.0)  # a new default: the same name, other code
    os.utime(plugin, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = spec("idtest_reg")
    assert new.run_id != old_id
    table = suite_status([new], results)
    assert table["state"].tolist() == ["pending"] and table["stale"].tolist() == [old_id]
    assert f"{old_id} -> {new.run_id}" in format_status(table)
    assert json.loads(json.dumps(new.identity()))["regularizer_hparams"] == {"strength": 2}


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


# The protocol fields of the first records (2026-11): every one enters every run id. A field
# added since must be declared with config.added() (out of the identity at its default).
FIRST_RECORDS_FIELDS = {
    "name", "description", "iterations", "batch_size", "optimizer.name", "optimizer.lr", "optimizer.momentum",
    "optimizer.nesterov", "optimizer.weight_decay", "schedule.type", "schedule.milestones",
    "schedule.gamma", "label_smoothing", "softmax_eps", "bn_momentum", "eval_every",
    "checkpoint_every", "data.input_scaling", "data.image_size", "data.augmentation.pad",
    "data.augmentation.pad_mode", "data.augmentation.flip", "data.drop_last", "data.max_train",
    "data.max_test", "runtime.precision", "runtime.channels_last", "runtime.device",
    "runtime.compile", "runtime.threads",
}


def test_a_new_protocol_field_must_be_declared_added():
    """The identity rule (config.py, "Run identity across versions"): a default protocol's
    identity holds the first records' fields and nothing else."""
    from benchmark.config import Protocol

    got = _leaves(Protocol(name="any").to_dict())
    assert got - FIRST_RECORDS_FIELDS == set(), (
        f"new protocol field(s) {sorted(got - FIRST_RECORDS_FIELDS)} enter every run id: declare "
        "them with config.added(default) so existing runs keep their ids")
    assert FIRST_RECORDS_FIELDS - got == set(), "a field of the first records left the identity"


def test_an_added_field_enters_the_identity_only_when_set():
    base = load_protocol("smoke")
    assert "validation" not in base.to_dict()["data"] and "betas" not in base.to_dict()["optimizer"]
    moved = load_protocol("smoke", {"data.validation": 100, "schedule.warmup_iterations": 5})
    assert moved.to_dict()["data"]["validation"] == 100
    assert moved.to_dict()["schedule"]["warmup_iterations"] == 5
    assert "points" not in moved.to_dict()["data"]


def test_committed_records_keep_their_ids():
    """The committed references are found, run for run, by the suites of today: the identity
    rule kept every id through the fields added since they were trained."""
    from pathlib import Path

    from benchmark.suites import load_suite

    root = Path(__file__).resolve().parents[2] / "results"
    for suite, n in (("quick", 27), ("fashion", 18)):
        ids = {p.stem for p in records.record_files(root / suite / "runs")}
        assert len(ids) == n and ids == {s.run_id for s in load_suite(suite).expand()}, suite
