"""A protocol's own numerical noise: the suite trained again under a float perturbation that does
not change the set-up, set against the spread across seeds.

    python -m benchmark sensitivity --suite quick        # base: the committed results/quick/runs

Every run of the suite is trained a second time with the kernels of a lower instruction-set
level (``isa``: AVX-512 -> AVX2 through ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` and
``MKL_ENABLE_INSTRUCTIONS``: what another x86-64 CPU would run), or with another intra-op
thread count (``threads``). Same seed, same data order, same hyper-parameters: any difference in
the outcome is rounding carried through training. Per label, the summary sets the RMS change of
final test error against the SD across seeds and lists every outcome flip (trained vs diverged
or stuck). A protocol fit for comparing regularizers has no flip and a perturbation spread well
below the seed spread. A perturbation that decorrelates the run completely, as a new seed would,
gives sqrt(2) x the seed SD in expectation (the difference of two independent draws). Training is often that
unstable (Summers & Dinneen, "Nondeterminism and Instability in Neural Network Optimization",
ICML 2021, arXiv 2103.04514: one-bit changes of the initial weights give runs as diverse as new
seeds); such a suite reproduces in distribution, not run by run, and ``compare``, which reads the
pooled RMS as the noise its verdict allows, checks it so.

Written to ``<out>/summary.json`` and ``<out>/summary.md``; the perturbed records stay in
``<out>/runs`` so the summary can be rebuilt from them (``--no-train``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.analysis.compare import compare_dirs, key_of, outcome_of
from benchmark.config import ConfigError
from benchmark.machine import facts, isa_perturbation
from benchmark.records import atomic_write, git_state, iter_records

PERTURBATIONS = ("isa", "threads")
# "Well below": the perturbation's RMS at most this fraction of the seed SD, for a suite whose
# runs reproduce run by run and not only in distribution.
WELL_BELOW = 0.5


def perturbation(kind: str, protocol_threads: int) -> dict[str, Any]:
    """{"kind", "env": variables for the training process, "set": protocol overrides, "what"}.
    ``threads`` changes the run ids (threads are part of a set-up's identity); runs are then
    paired by label and seed."""
    if kind == "isa":
        env = isa_perturbation()
        if env is None:
            raise ConfigError("--perturb isa: this CPU has no lower instruction-set level to "
                              "dispatch to; use --perturb threads")
        return {"kind": "isa", "env": env, "set": [],
                "what": f"kernels of {env['ATEN_CPU_CAPABILITY'].upper()} instead of "
                        f"{facts()['cpu_capability']} (ATen, oneDNN and MKL)"}
    if kind == "threads":
        other = 2 if protocol_threads == 1 else 1
        return {"kind": "threads", "env": {}, "set": [f"runtime.threads={other}"],
                "what": f"{other} intra-op thread(s) instead of the protocol's {protocol_threads or 'all'}"}
    raise ConfigError(f"--perturb must be one of {', '.join(PERTURBATIONS)}, got {kind!r}")


def train_perturbed(suite: str, profile: str | None, runs: Path, pert: dict, jobs: int,
                    progress: bool = True) -> None:
    """Train the suite into ``runs`` in a child process that starts with the perturbation's
    environment (torch reads the dispatch variables at import). A failed run is retried: a
    failure (a full disk, a kill) is not an effect of the perturbation."""
    cmd = [sys.executable, "-m", "benchmark", "run", "--suite", suite, "--results", str(runs),
           "--jobs", str(jobs), "--retry-failed", *(["--profile", profile] if profile else [])]
    for kv in pert["set"]:
        cmd += ["--set", kv]
    if not progress:
        cmd.append("--no-progress")
    subprocess.run(cmd, env={**os.environ, **pert["env"]}, check=True)


def _sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1))


def summarize(base: Path, perturbed: Path, pert: dict) -> dict[str, Any]:
    """Per label and pooled: seed SD of the base runs, RMS and largest change of final test
    error under the perturbation, and the outcome flips."""
    rows = compare_dirs(perturbed, base, match="label").runs
    by_key: dict[tuple, list] = defaultdict(list)
    for r in rows:
        by_key[r.key].append(r)
    base_errors: dict[tuple, list[float]] = defaultdict(list)
    for _, rec in iter_records(base):
        if (rec.get("final") or {}).get("test_error") is not None and outcome_of(rec) == "complete":
            base_errors[key_of(rec)].append(rec["final"]["test_error"])
    labels, all_d, ss, df, flips, missing = [], [], 0.0, 0, [], []
    for key, group in by_key.items():
        label = key[3]
        d = [r.final_error[0] - r.final_error[1] for r in group
             if r.outcome == ("complete", "complete") and None not in r.final_error]
        flipped = [{"seed": r.seed, "run_id": r.run_id, "perturbed": r.outcome[0], "base": r.outcome[1]}
                   for r in group if r.verdict != "missing" and r.outcome[0] != r.outcome[1]]
        missing += [{"label": label, "seed": r.seed, "side": r.note} for r in group
                    if r.verdict == "missing"]
        errs = base_errors.get(key, [])
        sd = _sd(errs)
        if sd is not None:
            ss, df = ss + sd**2 * (len(errs) - 1), df + len(errs) - 1
        labels.append({"label": label, "pairs": len(d), "seed_sd": sd,
                       "perturbation_rms": math.sqrt(sum(x * x for x in d) / len(d)) if d else None,
                       "max_abs_change": max(map(abs, d)) if d else None,
                       "mean_change": sum(d) / len(d) if d else None, "flips": flipped})
        all_d += d
        flips += [{"label": label, **f} for f in flipped]
    rms = math.sqrt(sum(x * x for x in all_d) / len(all_d)) if all_d else None
    seed_sd = math.sqrt(ss / df) if df else None
    ratio = rms / seed_sd if rms is not None and seed_sd else None
    # 1: the perturbation scatters a run like a new seed (d = the difference of two draws)
    decorrelation = ratio / math.sqrt(2) if ratio is not None else None
    return {
        "perturbation": pert, "base": str(base), "perturbed": str(perturbed),
        "machine": facts(), "git": git_state(), "labels": labels,
        "pooled": {"pairs": len(all_d), "perturbation_rms": rms, "seed_sd": seed_sd,
                   "ratio": ratio, "decorrelation": decorrelation, "flips": len(flips),
                   "missing": len(missing),
                   "changed_runs": sum(1 for r in rows if r.verdict != "identical")},
        "flips": flips, "missing": missing,
        "no_flips": bool(all_d) and not flips and not missing,
        "run_by_run": ratio is not None and ratio <= WELL_BELOW,
    }


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render(summary: dict[str, Any], title: str) -> str:
    p, pooled = summary["perturbation"], summary["pooled"]
    lines = [f"# Numerical sensitivity: {title}", "",
             f"Perturbation: {p['what']}. Base runs: `{summary['base']}`; perturbed: "
             f"`{summary['perturbed']}`. Machine: {summary['machine']['cpu_model']} "
             f"({summary['machine']['cpu_capability']}); code {summary['git']['commit'][:10]}.", "",
             "| label | pairs | seed SD | perturbation RMS | largest change | flips |",
             "|---|---|---|---|---|---|"]
    for lab in summary["labels"]:
        flips = ", ".join(f"seed {f['seed']}: {f['base']} -> {f['perturbed']}" for f in lab["flips"])
        lines.append(f"| {lab['label']} | {lab['pairs']} | {_f(lab['seed_sd'])} | "
                     f"{_f(lab['perturbation_rms'])} | {_f(lab['max_abs_change'])} | {flips or 'none'} |")
    lines += ["", f"Pooled over {pooled['pairs']} pairs: perturbation RMS {_f(pooled['perturbation_rms'], 3)} "
              f"points of final test error, seed SD {_f(pooled['seed_sd'], 3)} (ratio "
              f"{_f(pooled['ratio'])}); {pooled['changed_runs']} runs changed at all; "
              f"{pooled['flips']} outcome flip(s)"
              + (f"; {pooled['missing']} run(s) on one side only (incomplete)." if pooled["missing"] else "."), "",
              ("No outcome flip: no run's fate hangs on rounding." if summary["no_flips"] else
               "OUTCOME FLIPS or missing runs: whether a run trains depends on rounding (or the "
               "perturbed sweep is incomplete); this protocol cannot carry a comparison."),
              "",
              (f"Run by run: the perturbation's spread is at most {WELL_BELOW:g} x the seed spread."
               if summary["run_by_run"] else
               f"In distribution only: the perturbation moves a run's final error "
               f"{_f(pooled['decorrelation'])} x as much as a new seed would (1 = as much; "
               f"RMS / (sqrt(2) x seed SD)). Rounding decorrelates the runs, as Summers & Dinneen "
               f"(ICML 2021) found for one-bit changes: another machine reproduces the spread and "
               f"the means, not each run's number."),
              "", "`python -m benchmark compare` uses the pooled RMS as the per-run noise of this "
              "suite's reproduction verdict."]
    return "\n".join(lines) + "\n"


def write(summary: dict[str, Any], out: Path, title: str) -> None:
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True, default=str))
    atomic_write(out / "summary.md", render(summary, title))
