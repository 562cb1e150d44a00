"""Did these runs reproduce those? Run-by-run comparison of two results directories.

    python -m benchmark compare --results runs/quick --reference results/quick/runs

Runs are matched by run id (same set-up and seed: the id covers everything that changes a
run's numbers). For each pair the verdict is one of

- ``identical``: same status and every curve value equal, bit for bit;
- ``within tolerance``: every curve value within ``atol + rtol * |reference|`` (defaults:
  ``rtol`` 1e-4, ``atol`` 1e-6; a different CPU, BLAS or thread count moves float32 rounding);
- ``different``: anything else, with the largest difference in final test error and the first
  evaluation (iteration and curve) where the runs part;
- ``missing``: the run is in only one of the two directories.

Beside each verdict: the environment fields that differ between the two records (code
version, torch/numpy versions, device, threads, BLAS), the usual explanation of a difference.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import iter_records

VERDICTS = ("identical", "within tolerance", "different", "missing")
# Curves compared value by value (``energy`` holds one curve per layer).
CURVES = ("test_acc", "train_loss", "penalty", "energy_total")


@dataclass
class Comparison:
    """One run id's verdict; ``first_difference`` is (iteration, curve name) or None."""

    run_id: str
    label: str
    seed: int | None
    verdict: str
    final_error: tuple[float | None, float | None] = (None, None)  # (results, reference)
    max_abs_difference: float = 0.0
    first_difference: tuple[int, str] | None = None
    environment: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    note: str = ""


def environment_of(record: dict) -> dict[str, Any]:
    """What may explain a numerical difference, flattened to comparable values."""
    versions = record.get("versions") or {}
    runtime = record.get("runtime") or {}
    git = record.get("git") or {}
    return {
        "code": (git.get("commit") or "unknown")[:10] + ("+dirty" if git.get("dirty") else ""),
        "torch": versions.get("torch"), "numpy": versions.get("numpy"),
        "python": versions.get("python"), "device": record.get("device"),
        "threads": runtime.get("threads"), "blas": record.get("blas"),
        "packed_seeds": runtime.get("packed_seeds"),
    }


def _series(record: dict) -> dict[str, list]:
    curves = record.get("curves") or {}
    out = {name: list(curves.get(name) or []) for name in CURVES}
    for layer, values in sorted((curves.get("energy") or {}).items()):
        out[f"energy[{layer}]"] = list(values)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(b)


def compare_records(ours: dict, ref: dict, *, rtol: float = 1e-4, atol: float = 1e-6) -> Comparison:
    """The verdict for one run present in both directories."""
    env_a, env_b = environment_of(ours), environment_of(ref)
    c = Comparison(
        run_id=ours["run_id"], label=ours.get("label") or ours["config"].get("regularizer", ""),
        seed=ours.get("seed"), verdict="identical",
        final_error=((ours.get("final") or {}).get("test_error"), (ref.get("final") or {}).get("test_error")),
        environment={k: (env_a[k], env_b[k]) for k in env_a if env_a[k] != env_b[k]},
    )
    if ours["status"] != ref["status"]:
        c.verdict, c.note = "different", f"status {ours['status']} vs {ref['status']}"
    a, b = _series(ours), _series(ref)
    iterations = (ours.get("curves") or {}).get("iteration") or []
    if set(a) != set(b) or iterations != ((ref.get("curves") or {}).get("iteration") or []):
        c.verdict = "different"
        c.note = c.note or "the records log different curves or evaluation points"
        return c
    exact = c.verdict == "identical"
    for i, it in enumerate(iterations):  # evaluation by evaluation: where do they part?
        for name in a:
            x, y = (a[name][i] if i < len(a[name]) else None), (b[name][i] if i < len(b[name]) else None)
            if x is not None and y is not None and not (math.isnan(x) or math.isnan(y)):
                c.max_abs_difference = max(c.max_abs_difference, abs(x - y))
            if not _same(x, y):
                exact = False
                if not _close(x, y, rtol, atol) and c.first_difference is None:
                    c.first_difference = (it, name)
    if c.verdict == "identical" and not exact:
        c.verdict = "within tolerance" if c.first_difference is None else "different"
    return c


def compare_dirs(results: str | Path, reference: str | Path, *, rtol: float = 1e-4,
                 atol: float = 1e-6) -> list[Comparison]:
    """Every run id of either directory, in the reference's order, then new ones."""
    ours = {r["run_id"]: r for _, r in iter_records(results)}
    refs = {r["run_id"]: r for _, r in iter_records(reference)}
    out = []
    for run_id in list(refs) + [k for k in ours if k not in refs]:
        if run_id in ours and run_id in refs:
            out.append(compare_records(ours[run_id], refs[run_id], rtol=rtol, atol=atol))
        else:
            rec = ours.get(run_id) or refs[run_id]
            where = "reference only" if run_id in refs else "results only"
            out.append(Comparison(run_id, rec.get("label", ""), rec.get("seed"), "missing", note=where))
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_comparison(rows: list[Comparison], results: str | Path, reference: str | Path, *,
                      rtol: float = 1e-4, atol: float = 1e-6) -> str:
    """A per-run table and a summary, as plain text for a terminal or a log."""
    lines = [f"compare: {results} against the reference {reference} "
             f"(tolerance: |a - b| <= {atol:g} + {rtol:g} |b| on every curve value)", ""]
    width = max([len(r.label) for r in rows] + [5])
    lines.append(f"{'run':<16}  {'label':<{width}}  seed  {'verdict':<16}  error %  (ref)    where")
    for r in rows:
        where = r.note or ("" if r.first_difference is None
                           else f"first at iteration {r.first_difference[0]} ({r.first_difference[1]})")
        lines.append(f"{r.run_id:<16}  {r.label:<{width}}  {'-' if r.seed is None else r.seed!s:>4}  "
                     f"{r.verdict:<16}  {_fmt(r.final_error[0]):>7}  ({_fmt(r.final_error[1])})  {where}")
    counts = Counter(r.verdict for r in rows)
    lines += ["", "summary: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])]
    diffs = [r for r in rows if r.verdict in ("different", "within tolerance")]
    if diffs:
        worst = max(diffs, key=lambda r: abs((r.final_error[0] or 0) - (r.final_error[1] or 0)))
        gap = abs((worst.final_error[0] or 0) - (worst.final_error[1] or 0))
        lines.append(f"largest final test-error difference: {gap:.2f} points ({worst.label}, "
                     f"seed {worst.seed}, run {worst.run_id})")
    envs: dict[str, set] = {}
    for r in rows:
        for key, pair in r.environment.items():
            envs.setdefault(key, set()).add(pair)
    for key, pairs in sorted(envs.items()):
        shown = "; ".join(f"{a} here vs {b} in the reference" for a, b in sorted(pairs, key=str)[:3])
        lines.append(f"environment differs: {key}: {shown}")
    if not envs and rows:
        lines.append("environment: the same code version, packages, device and threads as the reference")
    return "\n".join(lines)
