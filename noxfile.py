"""nox sessions. All of them run in the ONE project environment (.venv, made by `make setup`):
a CUDA build of torch is ~5.8 GB, and a copy per session would cost minutes and disk for nothing.

    nox -s tests                        # the test suite (what CI runs, through `make test`)
    nox -s benchmark                    # offline `quick` suite -> results/leaderboard.md
    nox -s benchmark -- --suite table2  # any suite; --regularizer NAME --plugin FILE also work
    nox -s reproduce_table2 -- --profile smoke
    nox -s perf                         # step-time ratios on whatever device is here
    nox -s lint
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
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


@nox.session(python=False)
def benchmark(session: nox.Session) -> None:
    """Run the leaderboard suite (offline `quick` by default) and regenerate the leaderboard."""
    p = argparse.ArgumentParser(prog="nox -s benchmark --")
    p.add_argument("--suite", default="quick")
    p.add_argument("--profile")
    p.add_argument("--regularizer", help="add/restrict to this regularizer (e.g. a plugin's)")
    p.add_argument("--plugin", action="append", default=[])
    p.add_argument("--results", default=None)
    p.add_argument("--jobs", default="1")
    p.add_argument("--pack-seeds", default="1", help="seeds per packed program (GPU)")
    p.add_argument("--leaderboard", default="results/leaderboard.md")
    a = p.parse_args(session.posargs)
    results = a.results or f"results/{Path(a.suite).stem}"
    plugins = [x for plugin in a.plugin for x in ("--plugin", plugin)]
    run = [*plugins, "run", "--suite", a.suite, "--results", f"{results}/runs", "--jobs", a.jobs,
           "--pack-seeds", a.pack_seeds]
    if a.profile:
        run += ["--profile", a.profile]
    if a.regularizer:
        run += ["--regularizer", a.regularizer]
    _bench(session, *run)
    _bench(session, *plugins, "report", "--results", f"{results}/runs", "--out", f"{results}/report",
           "--leaderboard", a.leaderboard)


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
