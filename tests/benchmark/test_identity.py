"""Run identity: resolved hyper-parameters, plugin source (issue 13 "stale identity")."""

from __future__ import annotations

import json
import os
import textwrap

from benchmark import records
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
