"""`compare`: identical / consistent / inconsistent, per run, per label and overall."""

from __future__ import annotations

import copy
import json

import pytest

from benchmark.cli import main
from benchmark.analysis.compare import compare_dirs, environment_of, format_comparison, load_noise, seed_noise
from benchmark.records import iter_records, record_path, write_json_atomic
from tests.helpers import fake_train, make_specs

MACHINE = {"cpu_model": "Xeon", "cpu_vendor": "GenuineIntel", "cpu_capability": "AVX512",
           "blas": "mkl", "onednn": "v3", "openmp": "201511", "intra_op_threads": 1}


@pytest.fixture
def pair(tmp_path):
    """Three labels x 3 seeds of fake runs in two directories (results a, reference b/runs),
    identical to start with, and a measured noise of 1 point beside the reference."""
    a, b = tmp_path / "a", tmp_path / "b" / "runs"
    recs = []
    for spec in make_specs(n_seeds=3):
        r = fake_train(spec, b, progress=False)
        r["machine"] = dict(MACHINE)
        write_json_atomic(record_path(b, r["run_id"]), r)
        write_json_atomic(record_path(a, r["run_id"]), r)
        recs.append(r)
    _noise(tmp_path / "b", 1.0)
    return a, b, recs


def _noise(root, rms, pairs=40):
    (root / "sensitivity").mkdir(exist_ok=True)
    (root / "sensitivity" / "summary.json").write_text(json.dumps(
        {"pooled": {"perturbation_rms": rms, "pairs": pairs}}))


def _edit(directory, record, fn):
    r = copy.deepcopy(record)
    fn(r)
    write_json_atomic(record_path(directory, r["run_id"]), r)


def _shift(delta):
    """A numerically different run: every curve value moved a little, the final error by delta."""
    def fn(r):
        r["curves"]["train_loss"] = [x + 1e-3 for x in r["curves"]["train_loss"]]
        r["curves"]["test_acc"][-1] -= delta
        r["final"]["test_acc"] -= delta
        r["final"]["test_error"] += delta
        r["machine"]["cpu_capability"] = "AVX2"
    return fn


def test_identical_runs(pair):
    a, b, _ = pair
    v = compare_dirs(a, b)
    assert v.verdict == "identical" and {r.verdict for r in v.runs} == {"identical"}
    text = format_comparison(v, a, b)
    assert "verdict: identical" in text and "environment: the same" in text


def test_hardware_like_differences_are_consistent_and_name_the_facts(pair):
    a, b, recs = pair
    for r, delta in zip(recs, [0.5, -1.0, 1.0, 0.0, -0.5, 1.0, 0.5, -1.0, 0.0]):
        _edit(a, r, _shift(delta))
    v = compare_dirs(a, b)
    assert v.verdict == "consistent", format_comparison(v, a, b)
    assert {r.verdict for r in v.runs} == {"consistent"}
    assert v.noise.measured and v.noise.sigma == 1.0
    text = format_comparison(v, a, b)
    assert "environment differs: cpu_capability: AVX2 here vs AVX512 in the reference" in text
    assert "verdict: consistent" in text and "not bit-identical" in text


def test_a_label_moved_beyond_the_noise_is_inconsistent(pair):
    a, b, recs = pair
    for r in recs:  # hs_mhe worse by 4 points on every seed: 4 sigma x sqrt(3) of a mean
        _edit(a, r, _shift(4.0 if r["config"]["regularizer"] == "hs_mhe" else 0.3))
    v = compare_dirs(a, b)
    assert v.verdict == "inconsistent"
    labels = {lab.label: lab for lab in v.labels}
    bad = [lab for lab in v.labels if lab.verdict == "inconsistent"]
    assert len(bad) == 1 and bad[0].mean_difference == pytest.approx(4.0)
    assert bad[0].bound < 4.0 and all(lab.bound > 0.3 for lab in labels.values())
    # each of its runs is outside the per-run band too (a pointer, not the verdict)
    assert {r.verdict for r in v.runs if r.key == bad[0].label or r.label == bad[0].label} == {"outside band"}
    assert "INCONSISTENT" in format_comparison(v, a, b)


def test_an_outcome_flip_is_inconsistent_and_named(pair):
    a, b, recs = pair
    _edit(a, recs[0], lambda r: r.update(status="diverged", reason="non-finite loss at iteration 7"))
    v = compare_dirs(a, b)
    row = {r.run_id: r for r in v.runs}[recs[0]["run_id"]]
    assert row.verdict == "inconsistent" and row.note == "outcome diverged here vs complete in the reference"
    assert v.verdict == "inconsistent"
    assert recs[0]["run_id"] in format_comparison(v, a, b)


def test_a_missing_run_is_inconsistent(pair):
    a, b, recs = pair
    record_path(a, recs[2]["run_id"]).unlink()
    v = compare_dirs(a, b)
    assert v.verdict == "inconsistent"
    assert {r.run_id: r for r in v.runs}[recs[2]["run_id"]].note == "reference only"


def test_old_records_show_unknown_machine_facts(pair):
    a, b, recs = pair
    _edit(a, recs[0], lambda r: r.pop("machine"))
    env = environment_of(next(r for _, r in iter_records(a) if r["run_id"] == recs[0]["run_id"]))
    assert env["cpu_model"] == "unknown" and env["cpu_capability"] == "unknown"
    assert "cpu_model: unknown here vs Xeon" in format_comparison(compare_dirs(a, b), a, b)


def test_without_a_measurement_the_bound_is_the_seed_spread(pair, tmp_path):
    a, b, recs = pair
    (tmp_path / "b" / "sensitivity" / "summary.json").unlink()
    assert load_noise(b) is None
    noise = seed_noise([r for _, r in iter_records(b)])
    # fake errors are 40 - seed for seeds 0, 1, 2 in every label: SD 1, so sqrt(2)
    assert not noise.measured and noise.sigma == pytest.approx(2 ** 0.5) and noise.df == 6
    v = compare_dirs(a, b)
    assert v.noise.sigma == pytest.approx(2 ** 0.5) and "not measured" in v.noise.source


def test_match_by_label_pairs_runs_whose_ids_differ(pair, tmp_path):
    a, b, recs = pair
    c = tmp_path / "c"
    for r in recs:  # another thread count: another run id, the same label and seed
        _edit(c, r, lambda x: (x.update(run_id="t" + x["run_id"][1:]), _shift(0.2)(x)))
    assert compare_dirs(c, b).verdict == "inconsistent"  # by id: nothing matches
    v = compare_dirs(c, b, match="label")
    assert v.verdict == "consistent" and len(v.runs) == len(recs)


def test_compare_command_exits_1_only_when_inconsistent(pair, capsys):
    a, b, recs = pair
    assert main(["compare", "--results", str(a), "--reference", str(b)]) == 0
    assert "verdict: identical" in capsys.readouterr().out
    _edit(a, recs[0], _shift(0.5))
    assert main(["compare", "--results", str(a), "--reference", str(b)]) == 0
    assert "verdict: consistent" in capsys.readouterr().out
    _edit(a, recs[0], lambda r: r.update(status="failed", reason="boom"))
    assert main(["compare", "--results", str(a), "--reference", str(b)]) == 1
    assert main(["compare", "--results", str(a), "--reference", str(b), "--report-only"]) == 0


def test_a_rerun_of_a_few_cells_is_checked_with_subset(pair, tmp_path):
    """Issue 24: "a rerun of any two final cells on another machine": the reference runs the
    rerun does not have are left out with --subset, not counted missing; the noise is still
    the whole reference's."""
    a, b, recs = pair
    few = tmp_path / "few"
    for r in recs[:2]:
        _edit(few, r, _shift(0.2))
    assert compare_dirs(few, b).verdict == "inconsistent"  # 7 reference runs missing
    v = compare_dirs(few, b, subset=True)
    assert v.verdict == "consistent" and len(v.runs) == 2
    assert v.noise.measured
    _edit(few, recs[0], lambda r: r.update(status="diverged"))  # a flip still shows
    assert compare_dirs(few, b, subset=True).verdict == "inconsistent"
    assert main(["compare", "--results", str(few), "--reference", str(b), "--subset"]) == 1


def test_the_noise_beside_a_tuned_suites_final_records_is_found(tmp_path):
    """A tuned suite keeps its final records at the top of its directory (results/<suite>/),
    so its sensitivity summary sits inside that directory, not beside it."""
    ref = tmp_path / "fashion_tuned"
    ref.mkdir()
    _noise(ref, 0.4)
    noise = load_noise(ref)
    assert noise is not None and noise.sigma == pytest.approx(0.4)
    _noise(tmp_path, 0.9)  # a summary beside the directory (the runs/ layout) comes first
    assert load_noise(ref).sigma == pytest.approx(0.9)


def test_the_verdict_says_measured_only_when_the_noise_was(pair, tmp_path):
    a, b, recs = pair
    _edit(a, recs[0], _shift(0.2))
    assert "measured numerical noise allows" in format_comparison(compare_dirs(a, b), a, b)
    (tmp_path / "b" / "sensitivity" / "summary.json").unlink()
    text = format_comparison(compare_dirs(a, b), a, b)
    assert "verdict: consistent" in text and "measured numerical noise allows" not in text
    assert "the seed spread allows" in text
