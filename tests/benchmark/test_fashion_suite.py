"""The fashion suite, its fashion_cpu protocol and the `gpu` profile (issue 17)."""

from __future__ import annotations

import pytest

from benchmark.config import ConfigError
from benchmark.suites import load_suite


def test_fashion_suite_baseline_first_and_the_cpu_protocol():
    suite = load_suite("fashion")
    assert [r.name for r in suite.regularizers] == [
        "weight_decay", "so", "srip", "hs_mhe", "rp_comhe", "ap_comhe"]
    assert suite.regularizers[0].display_label == "Baseline"
    assert suite.datasets == ("fashion_mnist",) and suite.models[0].kwargs == {"width": 0.25}
    p = suite.protocol
    assert p.name == "fashion_cpu" and p.data.max_test == 0 and p.data.max_train == 0
    assert p.softmax_eps == 1e-4 and p.label_smoothing == 0.01  # the recipe's loss, kept
    assert len(suite) == 6 * len(suite.seeds) and len(suite.seeds) >= 3


def test_gpu_profile_is_the_same_grid_at_paper_scale():
    cpu, gpu = load_suite("fashion"), load_suite("fashion", profile="gpu")
    assert gpu.name == "fashion:gpu" and gpu.datasets == ("fashion_mnist",)  # real data kept
    assert gpu.regularizers == cpu.regularizers
    assert gpu.models[0].kwargs == {"width": 1} and gpu.seeds == tuple(range(25))
    p = gpu.protocol
    assert p.name == "fashion_gpu" and p.batch_size == 128 and p.optimizer.lr == 0.1
    assert p.runtime.precision == "auto" and p.bn_momentum is None  # the paper's 0.001
    assert p.iterations > cpu.protocol.iterations
    assert not {s.run_id for s in gpu.expand()} & {s.run_id for s in cpu.expand()}


def test_gpu_profile_refuses_other_suites_in_one_line():
    with pytest.raises(ConfigError, match=r"^profile 'gpu' is defined for the suite\(s\) "
                                          r"fashion, fashion_tuned only, not 'quick'$"):
        load_suite("quick", profile="gpu")


def test_set_model_kwarg_still_wins_over_the_profile():
    suite = load_suite("fashion", {"model.width": 0.5}, profile="gpu")
    assert suite.models[0].kwargs == {"width": 0.5}


def test_gpu_profile_scales_the_tuned_design_to_paper_width(tmp_path):
    from benchmark.tuning import tune_specs
    cpu, gpu = load_suite("fashion_tuned"), load_suite("fashion_tuned", profile="gpu")
    assert gpu.tuning == cpu.tuning and gpu.regularizers == cpu.regularizers  # same design
    assert gpu.protocol.name == "fashion_gpu" and gpu.models[0].kwargs == {"width": 1}
    tune = tune_specs(gpu)
    assert len(tune) == len(tune_specs(cpu)) == 60
    assert {s.protocol.data.validation for s in tune} == {10_000}
    assert {s.model_kwargs["width"] for s in tune} == {1}
    assert not {s.run_id for s in tune} & {s.run_id for s in tune_specs(cpu)}
