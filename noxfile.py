"""nox sessions. All of them run in the ONE project environment (.venv, made by `make setup`):
a CUDA build of torch is ~5.8 GB, and a copy per session would cost minutes and disk for nothing.

    nox -s tests                        # the test suite (what CI runs, through `make test`)
    nox -s tests -- -m "not slow" -q    # the quick loop while developing
    nox -s benchmark                    # retrain `quick` into runs/quick/, compare with results/quick
    nox -s benchmark -- --suite table2  # any suite; --regularizer NAME --plugin FILE also work
    nox -s reference                    # regenerate results/quick (runs, report, sensitivity)
                                        # and results/leaderboard.md
    nox -s reference -- --suite fashion # regenerate results/fashion (~25 min + its sensitivity)
    nox -s sensitivity -- --suite quick # only re-measure a suite's numerical noise
    nox -s leaderboard                  # only re-render results/leaderboard.md from the records
    nox -s reproduce_table2 -- --profile smoke
    nox -s perf                         # step-time ratios on whatever device is here
    nox -s lint
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
# The committed suites the leaderboard shows, in this order: results/<suite>/ holds each one's
# records (a tuned suite's final records at its top, an untuned suite's under runs/).
LEADERBOARD_SUITES = ("fashion_tuned", "quick")
# Superseded tables: listed at the leaderboard's end with a link, not shown as current results
# (fashion: 500 iterations, untuned, 3 seeds; replaced by fashion_tuned, issue 24).
LEADERBOARD_HISTORY = ("fashion",)
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _bench(session: nox.Session, *args: str) -> None:
    session.run(_python(), "-m", "benchmark", *args, external=True)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The test suite on the CPU (GPU-only checks skip themselves without CUDA)."""
    session.run(_python(), "-m", "pytest", *(session.posargs or ["-q"]), external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run(_python(), "-m", "ruff", "check", "regularizers", "models", "benchmark", "tests",
                external=True)


def _suite_args(session: nox.Session, prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--suite", default="quick")
    p.add_argument("--profile")
    p.add_argument("--regularizer", action="append", default=[],
                   help="add/restrict to this regularizer (e.g. a plugin's); repeatable")
    p.add_argument("--plugin", action="append", default=[])
    # 2: the CPU protocols run one thread per run (their runtime.threads), one run per core
    p.add_argument("--jobs", default="2")
    p.add_argument("--pack-seeds", default="1", help="seeds per packed program (GPU)")
    return p.parse_args(session.posargs)


def _plugins(a: argparse.Namespace) -> list[str]:
    return [x for plugin in a.plugin for x in ("--plugin", plugin)]


def _train(session: nox.Session, a: argparse.Namespace, results: Path) -> None:
    run = [*_plugins(a), "run", "--suite", a.suite, "--results", str(results / "runs"), "--jobs",
           a.jobs, "--pack-seeds", a.pack_seeds]
    if a.profile:
        run += ["--profile", a.profile]
    for reg in a.regularizer:
        run += ["--regularizer", reg]
    _bench(session, *run)


def _report(session: nox.Session, a: argparse.Namespace, results: Path,
            leaderboard: Path | None) -> None:
    _bench(session, *_plugins(a), "report", "--results", str(results / "runs"), "--out",
           str(results / "report"), *(["--leaderboard", str(leaderboard)] if leaderboard else []))


def _train_and_report(session: nox.Session, a: argparse.Namespace, results: Path,
                      leaderboard: Path | None) -> None:
    _train(session, a, results)
    _report(session, a, results, leaderboard)


def _committed_leaderboard(session: nox.Session) -> None:
    """results/leaderboard.md from every committed suite of LEADERBOARD_SUITES that has
    records: one set of sections per suite, so regenerating one keeps the others; the
    LEADERBOARD_HISTORY suites listed at the end."""
    def has_records(name: str) -> bool:  # both layouts: results/<suite>/*.json, .../runs/*.json
        d = ROOT / "results" / name
        return any(d.glob("*.json")) or any((d / "runs").glob("*.json"))

    def flags(flag: str, names: tuple[str, ...]) -> list[str]:
        return [x for n in names if has_records(n) for x in (flag, f"results/{n}")]

    args = flags("--results", LEADERBOARD_SUITES)
    if not args:
        session.error("no committed records under results/<suite>/ for the leaderboard")
    _bench(session, "leaderboard", *args, *flags("--history", LEADERBOARD_HISTORY),
           "--out", "results/leaderboard.md")


@nox.session(python=False)
def benchmark(session: nox.Session) -> None:
    """The main job: train a suite (offline `quick` by default) from scratch into runs/<suite>/
    (untracked, recreated every time), compare every run with the committed reference
    results/<suite>/runs, then build the report and a leaderboard from the fresh runs."""
    a = _suite_args(session, "nox -s benchmark --")
    name = Path(a.suite).stem + (f"-{a.profile}" if a.profile else "")
    fresh = ROOT / "runs" / name
    if fresh.exists():  # this session's own scratch directory: a reproduction starts from nothing
        shutil.rmtree(fresh)
    _train(session, a, fresh)
    # The verdicts first: they are per run, so they print even when the report refuses the
    # fresh runs (for example a cell mixing code versions because the code changed mid-sweep).
    reference = ROOT / "results" / name / "runs"
    if reference.exists():
        _bench(session, "compare", "--results", str(fresh / "runs"), "--reference", str(reference))
    else:
        session.log(f"no committed reference at {reference.relative_to(ROOT)}: nothing to compare")
    _report(session, a, fresh, fresh / "leaderboard.md")
    session.log(f"fresh runs, report and leaderboard: {fresh.relative_to(ROOT)}/")


@nox.session(python=False)
def reference(session: nox.Session) -> None:
    """Regenerate a suite's committed reference records and report on purpose (after a change
    that moves numbers): results/<suite>/ is replaced; then results/leaderboard.md is rebuilt
    from every committed suite's records (LEADERBOARD_SUITES), the others' sections kept."""
    a = _suite_args(session, "nox -s reference --")
    name = Path(a.suite).stem + (f"-{a.profile}" if a.profile else "")
    target = ROOT / "results" / name
    if target.exists():
        shutil.rmtree(target)
    _train_and_report(session, a, target, None)
    # the protocol's numerical noise, measured beside the new reference: `compare` reads it
    _bench(session, *_plugins(a), "sensitivity", "--suite", a.suite, "--base", str(target / "runs"),
           "--out", str(target / "sensitivity"), "--jobs", a.jobs,
           *(["--profile", a.profile] if a.profile else []))
    if not a.profile:  # a profile's records are not the committed table's
        _committed_leaderboard(session)


@nox.session(python=False)
def sensitivity(session: nox.Session) -> None:
    """Re-measure a suite's numerical noise against its committed reference (results/<suite>/):
    every run again under another instruction-set level; writes results/<suite>/sensitivity/."""
    a = _suite_args(session, "nox -s sensitivity --")
    name = Path(a.suite).stem + (f"-{a.profile}" if a.profile else "")
    _bench(session, *_plugins(a), "sensitivity", "--suite", a.suite, "--jobs", a.jobs,
           "--base", str(ROOT / "results" / name / "runs"),
           "--out", str(ROOT / "results" / name / "sensitivity"),
           *(["--profile", a.profile] if a.profile else []))


@nox.session(python=False)
def leaderboard(session: nox.Session) -> None:
    """Re-render results/leaderboard.md from the committed records (LEADERBOARD_SUITES), no
    training."""
    _committed_leaderboard(session)


@nox.session(python=False)
def reproduce_table2(session: nox.Session) -> None:
    """The paper's Table 2 grid: `--profile paper` (GPU, CIFAR) or `--profile smoke` (CPU, offline)."""
    p = argparse.ArgumentParser(prog="nox -s reproduce_table2 --")
    p.add_argument("--profile", default="paper", choices=["paper", "smoke"])
    p.add_argument("--jobs", default="1")
    p.add_argument("--pack-seeds", default="1", help="seeds per packed program (GPU)")
    a = p.parse_args(session.posargs)
    results = "results/table2" if a.profile == "paper" else "results/table2-smoke"
    run = ["run", "--suite", "table2", "--results", f"{results}/runs", "--jobs", a.jobs,
           "--pack-seeds", a.pack_seeds]
    if a.profile != "paper":
        run += ["--profile", a.profile]
    _bench(session, *run)
    _bench(session, "report", "--results", f"{results}/runs", "--out", results)


@nox.session(python=False)
def perf(session: nox.Session) -> None:
    """Step-time ratios (regularized / unregularized) on whatever device is here."""
    _bench(session, "perf", *session.posargs)
