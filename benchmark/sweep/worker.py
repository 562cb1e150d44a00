"""A worker process: ``python -m benchmark.sweep`` (``__main__.py``) with a JSON job on stdin runs one run
(or one packed group) under its lock and exits with its outcome. Its output goes to
``logs/<run_id>.log``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from benchmark import stopping
from benchmark.config import Protocol, RunSpec, from_dict
from benchmark.plugins import load_plugins
from benchmark.stopping import DiskFull, Interrupted
from benchmark.sweep.attempt import try_run, try_run_pack
from benchmark.sweep.claims import BUSY, SKIPPED

EXIT_BUSY = 75       # worker exit code for BUSY (EX_TEMPFAIL)


EXIT_SKIPPED = 76


EXIT_DISK_FULL = 77


INTERRUPTED_CODES = {-signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP, 128 + signal.SIGINT,
                     128 + signal.SIGTERM}


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    return {**spec.identity(), "label": spec.label, "suite": spec.suite}


def spec_from_dict(d: dict[str, Any]) -> RunSpec:
    return RunSpec(
        protocol=from_dict(Protocol, d["protocol"]), dataset=d["dataset"], model=d["model"],
        regularizer=d["regularizer"], seed=int(d["seed"]), model_kwargs=d.get("model_kwargs", {}),
        regularizer_hparams=d.get("regularizer_hparams", {}), label=d.get("label", ""),
        suite=d.get("suite"),
    )


def worker_main() -> int:
    """``python -m benchmark.sweep`` with a JSON job on stdin: run it, exit with its outcome.
    SIGINT/SIGTERM: checkpoint, release the locks, exit 128 + signal number."""
    job = json.loads(sys.stdin.read())
    # the parent's plugins (COMHE_PLUGINS) before any spec is rebuilt: a plugin regularizer's
    # run id covers its resolved hyper-parameters and its source
    load_plugins()
    with stopping.signals_request_stop():
        try:
            return worker_job(job)
        except Interrupted as stop:
            print(f"runner: interrupted by {stop}; checkpoint written", file=sys.stderr)
            return stop.exit_code
        except DiskFull as exc:
            print(f"runner: {exc}", file=sys.stderr)
            return EXIT_DISK_FULL


def worker_job(job: dict) -> int:
    if "specs" in job:  # a packed group: every run writes its own record; exit 0
        specs = [spec_from_dict(d) for d in job["specs"]]
        seen = {k: tuple(v) if v is not None else None for k, v in job["seen"].items()}
        outcomes = try_run_pack(specs, Path(job["results_dir"]), retry_failed=job["retry_failed"],
                                seen=seen, progress=False, pack_seeds=job.get("pack_seeds"))
        for run_id, outcome in outcomes.items():
            print(f"runner: {run_id} -> {outcome}", file=sys.stderr)
        return 0
    spec = spec_from_dict(job["spec"])
    if spec.run_id != job["spec_id"]:
        print(f"spec round trip changed the run id ({job['spec_id']} -> {spec.run_id})", file=sys.stderr)
        return 2
    seen = tuple(job["seen"]) if job["seen"] is not None else None
    outcome = try_run(spec, Path(job["results_dir"]), job["train_fn"],
                      retry_failed=job["retry_failed"], seen=seen, progress=False)
    print(f"runner: {spec.run_id} -> {outcome}", file=sys.stderr)
    return {BUSY: EXIT_BUSY, SKIPPED: EXIT_SKIPPED}.get(outcome, 0)

