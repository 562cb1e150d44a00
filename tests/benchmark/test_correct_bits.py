"""Per-image correctness of the final evaluation, stored in the record (single and packed
runs), decoded by the store and used for the paired (McNemar) standard error."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import correct_bits
from benchmark import training as engine
from benchmark.analysis.store import build_store
from tests.helpers import tiny_spec


def test_encode_decode_round_trip_and_malformed_input():
    x = np.random.default_rng(0).random(10_001) < 0.7
    enc = correct_bits.encode(x)
    assert np.array_equal(correct_bits.decode(enc), x) and len(enc["bits"]) < 10_001 // 5
    assert correct_bits.decode(None) is None
    assert correct_bits.decode({**enc, "n": 5}) is None  # length does not match
    assert correct_bits.decode({**enc, "bits": "!!"}) is None


def _spec(seed, reg="weight_decay"):
    return tiny_spec(reg, seed, **{"iterations": 4, "eval_every": 2, "batch_size": 16,
                                   "schedule.milestones": [2]})


@pytest.mark.parametrize("packed", [pytest.param(False, marks=pytest.mark.slow), True])
def test_records_carry_the_final_per_image_correctness(tmp_path, packed):
    specs = [_spec(0), _spec(1)]
    if packed:
        recs = engine.train_packed(specs, tmp_path, progress=False)
    else:
        recs = [engine.train(s, tmp_path, progress=False) for s in specs]
    for rec in recs:
        bits = correct_bits.decode(rec["final_correct"])
        assert bits.size == rec["final"]["n_test"]
        assert 100.0 * bits.mean() == pytest.approx(rec["final"]["test_acc"])
    runs, _ = build_store(tmp_path)
    assert runs["correct"].notna().all()
