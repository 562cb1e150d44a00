"""``python -m benchmark perf`` on the CPU: the rows, ratios and packed rows it reports."""

import re

import pytest

from benchmark.config import RunSpec, load_protocol
from benchmark.training import setup
from benchmark.tools.perf import ALL_REGULARIZERS, BARE, format_table, measure, parse_regularizers


def test_parse_regularizers_puts_the_baseline_first():
    assert list(parse_regularizers(None)) == ["weight_decay", "hs_mhe", "rp_comhe"]
    assert parse_regularizers("all") == ALL_REGULARIZERS
    assert list(parse_regularizers("ap_comhe,srip")) == ["weight_decay", "ap_comhe", "srip"]
    assert parse_regularizers("ap_comhe")["ap_comhe"] == {"proj_dim": 30}


@pytest.mark.slow
def test_measure_reports_single_and_packed_rows():
    result = measure(batch_size=8, steps=2, warmup=1, rounds=1, device="cpu",
                     model_kwargs={"width": 0.125}, num_classes=10, pack_seeds=2,
                     regularizers=parse_regularizers("rp_comhe"))
    rows = {(r["regularizer"], r["packed_seeds"]): r for r in result["rows"]}
    assert set(rows) == {("weight_decay", 1), ("weight_decay", 2), ("rp_comhe", 1), ("rp_comhe", 2)}
    assert rows[("weight_decay", 1)]["ratio"] == pytest.approx(1.0)
    for (name, seeds), r in rows.items():
        assert r["n_steps"] == 2 and r["median_ms"] > 0
        assert r["per_seed_ms"] == pytest.approx(r["median_ms"] / seeds)
        if seeds == 2:
            assert r["vs_single"] == pytest.approx(r["per_seed_ms"] / rows[(name, 1)]["median_ms"])
    table = format_table(result)
    # the packed row: | name | threads (whatever this process has) | 2 seeds per step |
    assert re.search(r"\| rp_comhe \(proj_dim=30, num_projections=20\) \| \d+ \| 2 \|", table), table


def test_measure_interleaves_threads_and_times_the_bare_loop_and_evaluation():
    result = measure(batch_size=8, steps=1, warmup=1, rounds=1, device="cpu",
                     model_kwargs={"width": 0.125}, num_classes=10, threads="1,2", bare=True,
                     eval_rounds=1, regularizers=parse_regularizers("so", registry_defaults=True))
    rows = {(r["regularizer"], r["threads"]): r for r in result["rows"]}
    assert set(rows) == {(n, t) for n in ("weight_decay", "so", BARE) for t in (1, 2)}
    assert rows[("so", 1)]["hparams"] == {}
    for t in (1, 2):
        assert rows[("weight_decay", t)]["ratio"] == pytest.approx(1.0)
        assert rows[("weight_decay", t)]["cpu_ratio"] == pytest.approx(1.0)
    assert all(r["cpu_ms"] > 0 for r in rows.values())
    assert [e["threads"] for e in result["evaluation"]] == [1, 2]
    assert all(e["engine_ms"] > 0 and e["bare_ms"] > 0 for e in result["evaluation"])
    assert "evaluation of 1024 test images" in format_table(result)


@pytest.mark.slow
def test_work_counts_the_step_flops_and_random_numbers():
    result = measure(batch_size=8, steps=1, warmup=1, rounds=1, device="cpu",
                     model_kwargs={"width": 0.125}, num_classes=10, bare=True, work=True,
                     regularizers=parse_regularizers("rp_comhe,so", registry_defaults=True))
    rows = {r["regularizer"]: r for r in result["rows"]}
    # the engine adds no matmul to the model's: the baseline step counts what the bare loop does
    assert rows["weight_decay"]["flops"] == rows[BARE]["flops"] > 0
    assert rows["weight_decay"]["flops_ratio"] == 1.0 and rows["weight_decay"]["random_numbers"] == 0
    assert rows[BARE]["random_numbers"] == 8  # its batch indices
    assert rows["so"]["flops"] > rows["weight_decay"]["flops"]  # the Gram W W^T of every layer
    assert rows["so"]["random_numbers"] == 0
    # RP redraws C x k x d Gaussians per projected layer each step: its buffers, counted again
    run = setup(RunSpec(load_protocol("paper_cifar", {"runtime.device": "cpu"}), "synthetic:10",
                        "cnn9", "rp_comhe", 0, model_kwargs={"width": 0.125}))
    drawn = sum(b.numel() for name, b in run.reg.named_buffers() if name.startswith("proj"))
    assert drawn > 0 and rows["rp_comhe"]["random_numbers"] == drawn
    assert rows["rp_comhe"]["flops_ratio"] > rows["so"]["flops_ratio"] > 1.0
    assert "| rp_comhe | 1 |" in format_table(result) and f"{drawn:,}" in format_table(result)
