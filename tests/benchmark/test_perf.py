"""``python -m benchmark perf`` on the CPU: the rows, ratios and packed rows it reports."""

import pytest

from benchmark.perf import ALL_REGULARIZERS, format_table, measure, parse_regularizers


def test_parse_regularizers_puts_the_baseline_first():
    assert list(parse_regularizers(None)) == ["weight_decay", "hs_mhe", "rp_comhe"]
    assert parse_regularizers("all") == ALL_REGULARIZERS
    assert list(parse_regularizers("ap_comhe,srip")) == ["weight_decay", "ap_comhe", "srip"]
    assert parse_regularizers("ap_comhe")["ap_comhe"] == {"proj_dim": 30}


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
    assert "| rp_comhe (proj_dim=30, num_projections=20) | 2 |" in table
