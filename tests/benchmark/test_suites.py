"""Suites: loading, expansion order, stable run ids, profiles, one-line errors before any run."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from benchmark.config import ConfigError
from benchmark.suites import available_suites, load_suite
from tests.helpers import fake_validate

PROTOCOL = """\
description: test protocol
iterations: 10
batch_size: 8
eval_every: 5
checkpoint_every: 5
schedule: {type: step, milestones: [8], gamma: 0.1}
runtime: {precision: fp32, channels_last: "off", device: cpu}
"""


def write_suite(tmp_path: Path, body: str, name: str = "mine") -> Path:
    (tmp_path / "proto.yaml").write_text(PROTOCOL)
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """\
protocol: proto.yaml
datasets: [synthetic, digits]
models: [cnn9, {name: cnn9, kwargs: {width: 0.5}}]
regularizers: [weight_decay, {name: rp_comhe, hparams: {proj_dim: 30}, label: RP-30}]
seeds: [0, 3]
"""


def test_shipped_suites():
    assert {"table2", "quick", "smoke"} <= set(available_suites())
    sizes = {"table2": 90, "quick": 27, "smoke": 6}
    for name, n in sizes.items():
        suite = load_suite(name, validate_fn=fake_validate)
        specs = suite.expand()
        assert len(specs) == len(suite) == n
        assert len({s.run_id for s in specs}) == n and {s.suite for s in specs} == {name}
    quick = load_suite("quick", validate_fn=fake_validate)
    assert quick.protocol.name == "cpu_quick" and quick.models[0].kwargs == {"width": 0.25}
    assert len(quick.regularizers) == 9 and quick.seeds == (0, 1, 2)


def test_expansion_order_and_stable_ids(tmp_path):
    path = write_suite(tmp_path, GOOD)
    specs = load_suite(path, validate_fn=fake_validate).expand()
    assert len(specs) == 2 * 2 * 2 * 2
    keys = [(s.dataset, s.model_kwargs.get("width"), s.seed, s.label) for s in specs]
    assert keys[:4] == [("synthetic", None, 0, "weight_decay"), ("synthetic", None, 0, "RP-30"),
                        ("synthetic", None, 3, "weight_decay"), ("synthetic", None, 3, "RP-30")]
    assert keys == sorted(keys, key=lambda k: (k[0] != "synthetic", k[1] is not None, k[2], k[3] != "weight_decay"))
    # Same ids on reload, in another suite (other name, labels, key order): ids ignore them.
    other = write_suite(tmp_path, """\
        seeds: [3, 0]
        regularizers: [{name: rp_comhe, hparams: {proj_dim: 30}, label: other}, weight_decay]
        models: [{name: cnn9, kwargs: {width: 0.5}}, cnn9]
        datasets: [digits, synthetic]
        protocol: proto.yaml
        """, name="other")
    again = load_suite(path, validate_fn=fake_validate).expand()
    assert [s.run_id for s in again] == [s.run_id for s in specs]
    assert {s.run_id for s in load_suite(other, validate_fn=fake_validate).expand()} == {s.run_id for s in specs}
    assert specs and all(re.fullmatch("[0-9a-f]{16}", s.run_id) for s in specs)


def test_overrides_and_profile(tmp_path):
    path = write_suite(tmp_path, GOOD)
    suite = load_suite(path, {"iterations": 20, "model.drop": 0.1}, validate_fn=fake_validate)
    assert suite.protocol.iterations == 20 and {m.kwargs["drop"] for m in suite.models} == {0.1}
    with pytest.raises(ConfigError, match="same run"):  # both models become cnn9 width 0.25
        load_suite(path, {"model.width": 0.25}, validate_fn=fake_validate)
    assert load_suite(path, validate_fn=fake_validate).expand()[0].run_id != suite.expand()[0].run_id
    smoke = load_suite("table2", profile="smoke", validate_fn=fake_validate)
    assert smoke.datasets == ("synthetic:10", "synthetic:100") and smoke.seeds == (0, 1)
    assert smoke.protocol.name == "smoke" and smoke.name == "table2:smoke"
    assert len(smoke.regularizers) == 9 and len(smoke.expand()) == 36
    only = smoke.with_regularizers(["mhe", "RP-CoMHE"])
    assert [r.name for r in only.regularizers] == ["mhe", "rp_comhe"]


@pytest.mark.parametrize("body, message", [
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [cnn9]\nregularizers: [mhe]\nseeds: 2\nsede: 1\n",
     "unknown key 'sede'"),
    ("protocol: proto.yaml\ndatasets: []\nmodels: [cnn9]\nregularizers: [mhe]\nseeds: 2\n",
     "'datasets' is empty"),
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [cnn9]\nregularizers: [mhe]\nseeds: 0\n",
     "empty grid"),
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [cnn9]\nregularizers: [mhe]\n", "missing required key 'seeds'"),
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [resnet999]\nregularizers: [mhe]\nseeds: 1\n",
     "unknown model 'resnet999'"),
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [cnn9]\nregularizers: [mhee]\nseeds: 1\n",
     "unknown regularizer 'mhee'"),
    ("protocol: proto.yaml\ndatasets: [imagenet22k]\nmodels: [cnn9]\nregularizers: [mhe]\nseeds: 1\n",
     "unknown dataset 'imagenet22k'"),
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [cnn9]\nregularizers: [mhe, mhe]\nseeds: 1\n",
     "share the label 'mhe'"),
    ("protocol: proto.yaml\ndatasets: [synthetic]\nmodels: [{name: cnn9, kwrgs: {}}]\nregularizers: [mhe]\nseeds: 1\n",
     "did you mean 'kwargs'"),
    ("protocol: nope\ndatasets: [synthetic]\nmodels: [cnn9]\nregularizers: [mhe]\nseeds: 1\n",
     "unknown protocol 'nope'"),
    ("protocol: proto.yaml\ndatasets: [synthetic\n", "not valid YAML"),
])
def test_bad_suites_fail_with_one_line(tmp_path, body, message):
    """Through the engine's real ``validate`` (the default), not a stand-in for it."""
    path = write_suite(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_suite_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'table2'"):
        load_suite("tabel2", validate_fn=fake_validate)
    with pytest.raises(ConfigError, match="unknown profile"):
        load_suite("table2", profile="huge", validate_fn=fake_validate)
    path = write_suite(tmp_path, GOOD.replace("[synthetic, digits]", "[svhn_extra]"))
    with pytest.raises(ConfigError, match="unknown dataset 'svhn_extra'"):
        load_suite(path, profile="smoke", validate_fn=fake_validate)
