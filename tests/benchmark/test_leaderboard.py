"""One leaderboard from several results directories (issue 17): `python -m benchmark
leaderboard --results A --results B` and `report.render_leaderboards`; each directory is
compared on its own and every section's heading states its set-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.analysis import cells, report
from benchmark.cli import main
from benchmark.records import record_files
from tests.helpers import copy_records
from tests.benchmark.test_report import make_store

QUICK = Path(__file__).resolve().parents[2] / "results" / "quick" / "runs"


def _sections(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("## ")]


def test_two_groups_two_sections_in_order_each_with_its_setup_and_holm_family(tmp_path):
    a, _ = make_store(cells=[("cifar100", "cnn9")], seeds=range(5))
    b, _ = make_store(cells=[("fashion_mnist", "cnn9")], seeds=[0, 1, 2, 7],
                      labels=("weight_decay", "so"))
    b = b.assign(suite="fashion", protocol="fashion_cpu", protocol_hash="p2",
                 model_kwargs='{"width": 0.25}', code="def5678")
    md = report.render_leaderboards([("res/b", b), ("res/a", a)], tmp_path / "lb.md").read_text()
    heads = _sections(md)
    assert heads == [
        "## fashion\\_mnist / cnn9 (width=0.25): suite fashion, protocol fashion\\_cpu (p2), "
        "seeds 0-2, 7 (n=4), code def5678",
        "## cifar100 / cnn9: suite test, protocol paper\\_cifar (p1), seeds 0-4 (n=5), "
        "code abc12340000"]
    assert "Generated from 28 run record(s) in res/b, res/a by" in md
    first, second = md.split(heads[1])
    assert "8 run record(s) from res/b." in first and "20 run record(s) from res/a." in second
    # Holm per directory: b has 1 comparison, a has 3 (not 4 over the page)
    assert "Holm over the table's 1 test(s)" in first
    assert "Holm over the table's 3 test(s)" in second


def test_the_single_directory_leaderboard_is_the_same_page_without_sources(tmp_path):
    runs, _ = make_store(cells=[("cifar100", "cnn9")], seeds=range(3))
    one = report.render_leaderboard(runs, tmp_path / "one.md").read_text()
    assert _sections(one) == ["## cifar100 / cnn9: suite test, protocol paper\\_cifar (p1), "
                              "seeds 0-2 (n=3), code abc12340000"]
    assert "run record(s) from" not in one and "Generated from 12 run record(s) by" in one


def test_a_setup_mix_in_any_group_names_it_and_writes_nothing(tmp_path):
    a, _ = make_store(cells=[("cifar100", "cnn9")], seeds=range(3))
    b = a.copy()
    b.loc[b.index[0], "protocol_hash"] = "other"
    out = tmp_path / "lb.md"
    out.write_text("old")
    with pytest.raises(cells.SetupError, match=r"^res/b: .*protocol"):
        report.render_leaderboards([("res/a", a), ("res/b", b)], out)
    assert out.read_text() == "old" and not list(tmp_path.glob(".*tmp"))


# --- the CLI on the committed quick records ----------------------------------------------------

@pytest.fixture
def two_dirs(tmp_path):
    if not record_files(QUICK):
        pytest.fail(f"committed records missing under {QUICK}")
    quick, other = tmp_path / "quick", tmp_path / "other"
    copy_records(QUICK, quick)
    other.mkdir(parents=True)
    for src in sorted(quick.glob("*.json")):  # the same runs as another suite's cell
        rec = json.loads(src.read_text())
        rec["suite"] = "other"
        rec["config"]["model_kwargs"] = {"width": 0.5}
        rec["run_id"] = rec["run_id"][::-1]
        (other / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return quick, other


def test_cli_leaderboard_holds_both_directories(two_dirs, tmp_path, capsys):
    quick, other = two_dirs
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results", str(other), "--results", str(quick),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    heads = _sections(out.read_text())
    assert len(heads) == 2
    assert heads[0].startswith("## digits / cnn9 (width=0.5): suite other, protocol cpu\\_quick")
    assert heads[1].startswith("## digits / cnn9 (width=0.25): suite quick, protocol cpu\\_quick")
    assert all("seeds 0-2 (n=3), code " in h for h in heads)


@pytest.mark.parametrize("case", ["missing", "twice", "empty"])
def test_cli_leaderboard_bad_input_is_one_line_and_writes_nothing(two_dirs, tmp_path, capsys,
                                                                  case):
    quick, other = two_dirs
    out = tmp_path / "lb.md"
    second = {"missing": tmp_path / "nope", "twice": Path(str(quick) + "/"),
              "empty": tmp_path / "empty"}[case]
    (tmp_path / "empty").mkdir(parents=True)
    assert main(["leaderboard", "--results", str(quick), "--results", str(second),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert {"missing": "does not exist", "twice": "given twice",
            "empty": "no run records"}[case] in err
    assert not out.exists()


def test_cli_leaderboard_refuses_a_pooled_setup_in_one_directory(two_dirs, tmp_path, capsys):
    quick, other = two_dirs
    victim = sorted(other.glob("*.json"))[0]
    rec = json.loads(victim.read_text())
    rec["config"]["protocol"]["iterations"] = 12
    victim.write_text(json.dumps(rec))
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results", str(quick), "--results", str(other),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other.as_posix()}: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


FASHION = QUICK.parents[1] / "fashion" / "runs"
DOC = QUICK.parents[2] / "docs" / "leaderboard.md"


@pytest.mark.skipif(not any(FASHION.glob("*.json")), reason="no committed fashion records")
def test_what_the_fashion_docs_claim_is_what_the_table_can_show():
    """docs/leaderboard.md's capability sentences quote the table's own power numbers: the
    minimum detectable difference, the pooled seed estimate with its interval, the flip floor
    and the image-level component, recomputed here from the committed records."""
    from benchmark.analysis import power
    from benchmark.analysis.store import build_store

    runs, _ = build_store(FASHION)
    table = cells.compare_to_baseline(runs, declared=cells.declared_order(runs))
    tp = power.table_power(table)
    doc = " ".join(DOC.read_text(encoding="utf-8").split())
    se = tp["seeds"]
    assert f"{tp['mdd']:.2f} points" in doc and f"pooled SD of the paired differences " \
        f"{tp['sd']:.2f} over {tp['df']} df" in doc
    assert f"{int(se['seeds'])} seeds [{int(se['seeds_low'])}, {int(se['seeds_high'])}]" in doc
    assert f"floor of {int(se['floor_seeds'])} seeds" in doc
    comp = table.loc[~table["is_baseline"], "image_component"]
    assert f"{comp.min():.2f}-{comp.max():.2f} points" in doc
    assert "No regularizer differs" not in doc and "McNemar" not in doc


TUNED = QUICK.parents[1] / "fashion_tuned"


@pytest.mark.skipif(len(list(TUNED.glob("*.json"))) < 66, reason="fashion_tuned incomplete")
def test_the_tuned_fashion_result_in_the_docs_is_the_committed_records():
    """docs/leaderboard.md's 11-seed table and power sentence, recomputed from the 66 committed
    final records: every mean, SD, difference, interval and the minimum detectable difference."""
    from benchmark.analysis import power
    from benchmark.analysis.store import build_store

    runs, _ = build_store(TUNED)
    table = cells.compare_to_baseline(runs, declared=cells.declared_order(runs))
    tp = power.table_power(table)
    doc = " ".join(DOC.read_text(encoding="utf-8").split()).replace("\u2212", "-")
    assert (f"minimum detectable paired difference is {tp['mdd']:.2f} points" in doc
            and f"{tp['n']} pairs, pooled SD of the paired differences {tp['sd']:.2f} over "
            f"{tp['df']} df" in doc)
    for _, r in table.iterrows():
        row = f"| {r['mean']:.2f} ± {r['std']:.2f} |"
        if not r["is_baseline"]:
            row += f" {r['mean_diff']:+.2f} [{r['diff_ci_low']:.2f}, {r['diff_ci_high']:.2f}]"
        assert f"| {r['label']} (" in doc and row in doc, r["label"]


# --- a tuned suite's section (issue 24 item 5) ----------------------------------------------

def test_a_tuned_suite_is_ranked_with_its_chosen_values_budget_and_plot(two_dirs, tmp_path):
    """A results directory with tuning/choice.yaml: its section ranks the methods by mean error,
    marks what beats the baseline after Holm, shows each method's chosen value and the tuning
    budget, and links the validation-curve figure; a directory without one is unchanged."""
    import yaml

    from benchmark.analysis.store import build_store

    quick, _ = two_dirs
    runs, _ = build_store(quick)
    labels = list(dict.fromkeys(runs["label"]))
    choice = {"suite": "quick", "grid_hash": "x", "metric": "val_error", "validation_images": 360,
              "seeds": [100, 101], "rule": "lowest mean validation error",
              "choices": [{"dataset": "digits", "model": "cnn9", "model_kwargs": {"width": 0.25},
                           "label": lab, "regularizer": lab, "param": "strength",
                           "chosen": 0.32, "grid": [{"value": v} for v in (0.1, 0.32, 1.0)]}
                          for lab in labels]}
    (quick / "tuning").mkdir()
    (quick / "tuning" / "choice.yaml").write_text(yaml.safe_dump(choice))
    (quick / "tuning" / "validation_curve_digits_cnn9.png").write_bytes(b"png")
    out = tmp_path / "board" / "lb.md"
    out.parent.mkdir()
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    md = out.read_text()
    assert ("Tuned suite: every method tuned with the same budget: 3 grid values x 2 tuning seeds "
            "(100, 101) on a 360-image validation split") in md
    assert "[../quick/tuning/validation_curve_digits_cnn9.png](../quick/tuning/validation_curve_digits_cnn9.png)" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| rank | label | chosen (validation) |")
    assert "beats baseline (Holm, 0.05)" in table[0]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    ranks = [int(r[0]) for r in body]
    means = [float(r[6].split()[0]) for r in body]
    assert ranks == sorted(ranks) and means == sorted(means) and len(body) == len(labels)
    assert all(r[2] == "strength = 0.32" for r in body)
    # the quick suite's differences are not significant after Holm: nobody beats the baseline
    assert {r[-3] for r in body} <= {"baseline", "no"} and "baseline" in {r[-3] for r in body}
    # without the choice file the same directory gives the plain, unranked section
    (quick / "tuning" / "choice.yaml").unlink()
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    assert "Tuned suite" not in out.read_text() and "| rank |" not in out.read_text()


def test_the_verdict_says_worse_when_a_method_is_significantly_worse():
    """fashion_tuned's finding is that methods are worse than the tuned baseline: "no" alone
    would hide it. Error is lower-better; Holm p decides; interim overrides every method."""
    from benchmark.analysis.leaderboard import verdict

    def row(p, diff, base=False):
        return {"is_baseline": base, "p_ttest_holm": p, "mean_diff": diff}

    assert verdict(row(0.001, -0.4), 0.05) == "yes"
    assert verdict(row(0.001, 0.4), 0.05) == "no: worse"
    assert verdict(row(0.2, 0.4), 0.05) == "no" and verdict(row(0.2, -0.4), 0.05) == "no"
    assert verdict(row(0.05, 0.4), 0.05) == "no"  # Holm's threshold is strict
    assert verdict(row(float("nan"), float("nan")), 0.05) == "no"
    assert verdict(row(0.001, 0.4), 0.05, interim=True) == "interim"
    assert verdict(row(float("nan"), float("nan"), base=True), 0.05, interim=True) == "baseline"


def _tuned_quick(quick: Path, suite: str = "quick") -> None:
    """A choice file for the committed quick records, as if the quick suite had been tuned."""
    import yaml

    from benchmark.analysis.store import build_store

    runs, _ = build_store(quick)
    choice = {"suite": suite, "grid_hash": "x", "metric": "val_error", "validation_images": 360,
              "seeds": [100, 101], "rule": "lowest mean validation error",
              "choices": [{"dataset": "digits", "model": "cnn9", "model_kwargs": {"width": 0.25},
                           "label": lab, "regularizer": lab, "param": "strength",
                           "chosen": 0.32, "grid": [{"value": v, "n": 2, "mean": 1.0, "sd": 0.1}
                                                    for v in (0.1, 0.32, 1.0)]}
                          for lab in dict.fromkeys(runs["label"])]}
    (quick / "tuning").mkdir(exist_ok=True)
    (quick / "tuning" / "choice.yaml").write_text(yaml.safe_dump(choice))


def _verdicts(md: str) -> set[str]:
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith("| ")][1:]
    return {r[-3] for r in rows}


def test_a_tuned_suite_short_of_its_planned_runs_is_interim_and_declares_no_winner(two_dirs,
                                                                                 tmp_path, capsys):
    """The quick suite plans 3 seeds x 9 methods = 27 runs. With all 27 the section is final;
    with one record gone it says 'Interim' with the count, and the verdict column says
    'interim' for every method (no peeking at an unfinished table); a choice file whose suite
    is not loadable here is not judged for completeness."""
    quick, _ = two_dirs
    _tuned_quick(quick)
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    md = out.read_text()
    assert "Interim" not in md and _verdicts(md) <= {"baseline", "no", "yes", "no: worse"}
    # the suite file's description stands above the table (where a suite says what its length
    # is and is not: fashion_tuned's "a fixed budget and not the plateau")
    from benchmark.suites import load_suite
    about = load_suite("quick", validate=False).description
    assert about and f"Suite: {about}." in " ".join(md.split())
    sorted(quick.glob("*.json"))[0].unlink()
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    md = out.read_text()
    assert ("**Interim:** the final stage is incomplete: 26 of 27 planned runs (9 methods x 3 "
            "seeds).") in " ".join(md.split())
    assert "no method is declared to beat the baseline yet" in md
    assert _verdicts(md) == {"baseline", "interim"}
    # the report says the same under its table, and on stderr
    assert main(["report", "--results", str(quick), "--out", str(tmp_path / "rep")]) == 0
    table = " ".join((tmp_path / "rep" / "table.md").read_text().split())
    assert ("**Note.** Interim (digits / cnn9): the final stage is incomplete: 26 of 27 planned "
            "runs") in table
    assert "Interim (digits / cnn9)" in capsys.readouterr().err
    _tuned_quick(quick, suite="no_such_suite")
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    assert "Interim" not in out.read_text() and "Suite: " not in out.read_text()


def test_history_lists_a_superseded_table_with_its_link_and_not_as_a_section(two_dirs, tmp_path,
                                                                           capsys):
    quick, other = two_dirs
    (other / "report").mkdir()
    (other / "report" / "table.md").write_text("old table")
    out = tmp_path / "board" / "lb.md"
    out.parent.mkdir()
    assert main(["leaderboard", "--results", str(quick), "--history", str(other),
                 "--out", str(out)]) == 0
    md = out.read_text()
    assert len(_sections(md)) == 2 and _sections(md)[-1].startswith("## History: superseded")
    history = md.split("## History")[1].replace("\\_", "_")
    assert f"- {other.as_posix()} (27 run records): [table](../other/report/table.md)" in history
    assert "suite other, protocol cpu_quick" in history and "| " not in history
    # the same directory as current and as history, or a missing one: one line, nothing written
    out.unlink()
    for bad, why in ((quick, "one or the other"), (tmp_path / "nope", "does not exist")):
        assert main(["leaderboard", "--results", str(quick), "--history", str(bad),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err and not out.exists()


def test_a_section_names_the_machines_that_trained_its_runs_with_counts_when_mixed(two_dirs, tmp_path):
    """Seeds of one table can come from different machines (a session's VM may be an Intel
    Xeon one day and an AMD EPYC the next): the heading says which, with run counts."""
    quick, _ = two_dirs
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    heading = next(line for line in out.read_text().splitlines() if line.startswith("## digits"))
    assert heading.endswith("trained on Intel(R) Xeon(R) Processor")
    files = sorted(quick.glob("*.json"))
    for src in files[:4]:
        rec = json.loads(src.read_text())
        rec["machine"] = {**rec["machine"], "cpu_model": "AMD EPYC"}
        src.write_text(json.dumps(rec))
    rec = json.loads(files[4].read_text())
    rec["machine"] = None
    files[4].write_text(json.dumps(rec))
    assert main(["leaderboard", "--results", str(quick), "--out", str(out)]) == 0
    heading = next(line for line in out.read_text().splitlines() if line.startswith("## digits"))
    assert heading.endswith(f"trained on AMD EPYC (4 runs) and Intel(R) Xeon(R) Processor "
                            f"({len(files) - 5} runs) and unrecorded (1 run)")
