"""Did these runs reproduce those? A verdict in three levels, per run, per label and overall.

    python -m benchmark compare --results runs/quick/runs --reference results/quick/runs

Runs are matched by run id (same set-up and seed), or with ``match="label"`` by (dataset, model,
label, seed), for runs whose ids differ on purpose (another thread count, a changed strength).

- ``identical``: same outcome and every curve value equal, bit for bit (kernels that round alike;
  usually the same stack, though another torch version can give it too).
- ``consistent``: numerically different, but no more than the protocol's own numerical noise
  predicts. That noise is what `benchmark sensitivity` measured: the root-mean-square change of
  a run's final test error when the same run is trained with the kernels of another
  instruction-set level (``<reference>/../sensitivity/summary.json``, or inside the reference
  directory for a tuned suite's final records). Without that file, the
  bound assumes the worst, that another machine scatters a run as much as a new seed does
  (sqrt(2) x the reference's pooled seed SD), and says so.
- ``inconsistent``: what that noise does not explain: a run whose outcome flips (trained here,
  diverged or stuck there, or the other way), a reference run with no counterpart (the set-up
  changed; ``subset=True`` / ``--subset`` leaves those out for a rerun of a few cells), or a label whose mean paired difference of final test error leaves its bound.

The label test: with d_s = error_here(s) - error_reference(s) over the n seeds both trained,
mean(d) must lie within q * sigma / sqrt(n), sigma the measured noise (floored at one test
image), q the t quantile (the noise estimate's degrees of freedom) at 1 - alpha / (2 L), alpha
0.01 family-wise over the L labels (Bonferroni). A run's own |d_s| beyond q_N * sigma (the same
rule over all N runs) is flagged ``outside band``: a pointer, not by itself a failure. docs/sweeps.md
gives the reasoning; tests/benchmark/test_compare.py checks each rule on constructed records,
and tests/benchmark/test_reproduction.py trains two rows of the quick suite: another thread count
passes, a 100x smaller learning rate fails.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from benchmark.machine import CPU_FIELDS, CUDA_FIELDS
from benchmark.records import iter_records
from benchmark.analysis.store import classify_outcome

VERDICTS = ("identical", "consistent", "inconsistent")
RUN_VERDICTS = ("identical", "consistent", "outside band", "inconsistent", "missing")
ALPHA = 0.01
# Curves compared value by value for "identical" and for where two runs part (``energy`` holds
# one curve per layer).
CURVES = ("test_acc", "train_loss", "penalty", "energy_total")
SENSITIVITY_FILE = Path("sensitivity") / "summary.json"


@dataclass
class Noise:
    """The numerical noise of a protocol: the SD (points of final test error) of the change that
    a hardware-like perturbation causes in one run, and the degrees of freedom of its estimate."""

    sigma: float
    df: float
    source: str
    measured: bool


@dataclass
class Comparison:
    """One matched run (or a run on one side only: ``missing``)."""

    run_id: str
    label: str
    seed: int | None
    verdict: str
    key: tuple = ()
    outcome: tuple[str | None, str | None] = (None, None)  # (results, reference)
    final_error: tuple[float | None, float | None] = (None, None)
    max_abs_difference: float = 0.0
    first_difference: tuple[int, str] | None = None  # (iteration, curve) where they part
    environment: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    note: str = ""


@dataclass
class LabelCheck:
    label: str
    n: int
    mean_difference: float | None
    bound: float | None
    verdict: str
    note: str = ""


@dataclass
class Verdict:
    """Everything `compare` found: ``verdict`` is the whole comparison's level."""

    runs: list[Comparison]
    labels: list[LabelCheck]
    noise: Noise
    verdict: str


def environment_of(record: dict) -> dict[str, Any]:
    """What may explain a numerical difference, flattened; "unknown" where an older record
    holds no such field (records before the ``machine`` block)."""
    versions, runtime, git = (record.get(k) or {} for k in ("versions", "runtime", "git"))
    machine = record["machine"] or {}
    env = {"code": (git.get("commit") or "unknown")[:10] + ("+dirty" if git.get("dirty") else ""),
           "torch": versions.get("torch"), "numpy": versions.get("numpy"),
           "python": versions.get("python"), "device": record.get("device"),
           "threads": runtime.get("threads"), "packed_seeds": runtime.get("packed_seeds")}
    cuda = "cuda_device" in machine
    for key in CPU_FIELDS + (CUDA_FIELDS if cuda else ()):
        env[key] = machine.get(key, "unknown")
    return env


def _series(record: dict) -> dict[str, list]:
    curves = record.get("curves") or {}
    out = {name: list(curves.get(name) or []) for name in CURVES}
    for layer, values in sorted((curves.get("energy") or {}).items()):
        out[f"energy[{layer}]"] = list(values)
    return out


def _equal(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(b)


def outcome_of(record: dict) -> str:
    """complete / diverged / stuck / failed: the store's classification of a run."""
    config = record.get("config") or {}
    eps = (config.get("protocol") or {}).get("softmax_eps", 0.0)
    return classify_outcome(record["status"], record.get("final") or {}, eps, config.get("dataset"))[0]


def key_of(record: dict) -> tuple:
    """(dataset, model, model kwargs, label): the runs of one row of a table."""
    config = record.get("config") or {}
    kwargs = json.dumps(config.get("model_kwargs") or {}, sort_keys=True)
    return (config.get("dataset"), config.get("model"), kwargs,
            record.get("label") or config.get("regularizer", ""))


def compare_records(ours: dict, ref: dict, *, rtol: float = 1e-4, atol: float = 1e-6) -> Comparison:
    """One pair: ``identical``, ``inconsistent`` (outcome flip, or curves that cannot be set side
    by side) or, for now, ``consistent`` (the band is applied by :func:`compare_dirs`)."""
    env_a, env_b = environment_of(ours), environment_of(ref)
    c = Comparison(
        run_id=ours["run_id"], label=key_of(ours)[3], seed=ours.get("seed"), key=key_of(ours),
        verdict="identical", outcome=(outcome_of(ours), outcome_of(ref)),
        final_error=((ours.get("final") or {}).get("test_error"), (ref.get("final") or {}).get("test_error")),
        environment={k: (env_a[k], env_b[k]) for k in env_a if env_a[k] != env_b[k]},
    )
    a, b = _series(ours), _series(ref)
    iterations = (ours.get("curves") or {}).get("iteration") or []
    if set(a) != set(b) or iterations != ((ref.get("curves") or {}).get("iteration") or []):
        c.verdict, c.note = "inconsistent", "the records log different curves or evaluation points"
        return c
    exact = True
    for i, it in enumerate(iterations):  # evaluation by evaluation: where do they part?
        for name in a:
            x, y = (a[name][i] if i < len(a[name]) else None), (b[name][i] if i < len(b[name]) else None)
            if x is not None and y is not None and not (math.isnan(x) or math.isnan(y)):
                c.max_abs_difference = max(c.max_abs_difference, abs(x - y))
            if not _equal(x, y):
                exact = False
                if not _close(x, y, rtol, atol) and c.first_difference is None:
                    c.first_difference = (it, name)
    if c.outcome[0] != c.outcome[1]:
        c.verdict, c.note = "inconsistent", f"outcome {c.outcome[0]} here vs {c.outcome[1]} in the reference"
    elif not exact or ours["status"] != ref["status"]:
        c.verdict = "consistent"
    return c


def load_noise(reference: str | Path) -> Noise | None:
    """The noise measured by `benchmark sensitivity` for a reference directory, if any: beside
    it (``results/<suite>/runs`` -> ``results/<suite>/sensitivity``) or, for a tuned suite whose
    final records sit at the top of ``results/<suite>/``, inside it."""
    for path in (Path(reference).parent / SENSITIVITY_FILE, Path(reference) / SENSITIVITY_FILE):
        try:
            pooled = json.loads(path.read_text())["pooled"]
            return Noise(float(pooled["perturbation_rms"]), float(pooled["pairs"]),
                         f"measured by `benchmark sensitivity` ({path})", True)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def seed_noise(refs: list[dict]) -> Noise:
    """Without a measurement: assume another machine scatters a run like a new seed, so a
    paired difference has SD sqrt(2) x the pooled within-label seed SD of the reference."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in refs:
        err = (r.get("final") or {}).get("test_error")
        if outcome_of(r) == "complete" and err is not None:
            groups[key_of(r)].append(err)
    ss = sum(sum((x - sum(v) / len(v)) ** 2 for x in v) for v in groups.values())
    df = sum(len(v) - 1 for v in groups.values())
    sd = math.sqrt(ss / df) if df > 0 else math.inf
    return Noise(math.sqrt(2) * sd, df, "not measured: sqrt(2) x the reference's pooled seed SD "
                 "(run `benchmark sensitivity` for a measured bound)", False)


def _quantile(tests: int, df: float, alpha: float) -> float:
    p = 1 - alpha / (2 * max(tests, 1))
    return float(stats.norm.ppf(p) if not math.isfinite(df) else stats.t.ppf(p, max(df, 1)))


def compare_dirs(results: str | Path, reference: str | Path, *, match: str = "run_id",
                 noise: Noise | None = None, alpha: float = ALPHA, rtol: float = 1e-4,
                 atol: float = 1e-6, subset: bool = False) -> Verdict:
    """Every run of either directory, in the reference's order, then the new ones; the label
    tests; the overall level. ``subset``: ``results`` reruns a few of the reference's runs on
    purpose; the reference runs it lacks are left out instead of counted missing (the noise is
    still the whole reference's)."""
    if match not in ("run_id", "label"):
        raise ValueError(f"match must be 'run_id' or 'label', got {match!r}")

    def index(directory):
        return {(r["run_id"] if match == "run_id" else (*key_of(r), r.get("seed"))): r
                for _, r in iter_records(directory)}

    ours, refs = index(results), index(reference)
    noise = noise or load_noise(reference) or seed_noise(list(refs.values()))
    rows = []
    for k in [k for k in refs if k in ours or not subset] + [k for k in ours if k not in refs]:
        if k in ours and k in refs:
            rows.append(compare_records(ours[k], refs[k], rtol=rtol, atol=atol))
        else:
            rec = ours.get(k) or refs[k]
            rows.append(Comparison(rec["run_id"], key_of(rec)[3], rec.get("seed"), "missing",
                                   key=key_of(rec), note="reference only" if k in refs else "results only"))
    # One test image is the resolution of a test error: a smaller sigma cannot be meant.
    n_test = min([(r.get("final") or {}).get("n_test") or math.inf for r in refs.values()] or [math.inf])
    sigma = max(noise.sigma, 100.0 / n_test if math.isfinite(n_test) else 0.0)
    paired = [r for r in rows if r.verdict in ("identical", "consistent")
              and r.outcome == ("complete", "complete") and None not in r.final_error]
    q_run = _quantile(len(paired), noise.df, alpha)
    for r in paired:
        if r.verdict == "consistent" and abs(r.final_error[0] - r.final_error[1]) > q_run * sigma:
            r.verdict = "outside band"
    labels = _label_checks(rows, sigma, noise.df, alpha)
    if all(r.verdict == "identical" for r in rows):
        overall = "identical"
    elif any(r.verdict in ("inconsistent", "missing") for r in rows) or any(
            lab.verdict == "inconsistent" for lab in labels):
        overall = "inconsistent"
    else:
        overall = "consistent"
    return Verdict(rows, labels, Noise(sigma, noise.df, noise.source, noise.measured), overall)


def _label_checks(rows: list[Comparison], sigma: float, df: float, alpha: float) -> list[LabelCheck]:
    by_key: dict[tuple, list[Comparison]] = defaultdict(list)
    for r in rows:
        by_key[r.key].append(r)
    q = _quantile(len(by_key), df, alpha)
    out = []
    for key, group in by_key.items():
        d = [r.final_error[0] - r.final_error[1] for r in group
             if r.outcome == ("complete", "complete") and None not in r.final_error]
        flips = [r for r in group if r.verdict in ("inconsistent", "missing")]
        if all(r.verdict == "identical" for r in group):
            out.append(LabelCheck(key[3], len(d), 0.0 if d else None, None, "identical"))
            continue
        mean = sum(d) / len(d) if d else None
        bound = q * sigma / math.sqrt(len(d)) if d else None
        verdict, note = "consistent", ""
        if flips:
            verdict, note = "inconsistent", f"{len(flips)} run(s) flipped or missing"
        elif mean is None:
            verdict, note = "inconsistent", "no run trained on both sides"
        elif abs(mean) > bound:
            verdict, note = "inconsistent", "mean difference beyond the noise bound"
        out.append(LabelCheck(key[3], len(d), mean, bound, verdict, note))
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_comparison(v: Verdict, results: str | Path, reference: str | Path) -> str:
    """Per-run and per-label tables, the verdict, and what differs between the machines."""
    rows = v.runs
    lines = [f"compare: {results} against the reference {reference}", ""]
    width = max([len(r.label) for r in rows] + [5])
    lines.append(f"{'run':<16}  {'label':<{width}}  seed  {'verdict':<12}  error %  (ref)    where")
    for r in rows:
        where = r.note or ("" if r.first_difference is None
                           else f"curves part at iteration {r.first_difference[0]} ({r.first_difference[1]})")
        lines.append(f"{r.run_id:<16}  {r.label:<{width}}  {'-' if r.seed is None else r.seed!s:>4}  "
                     f"{r.verdict:<12}  {_fmt(r.final_error[0]):>7}  ({_fmt(r.final_error[1])})  {where}")
    lines += ["", f"noise: sigma {v.noise.sigma:.3f} points of final test error per run, "
              f"{v.noise.source}; alpha {ALPHA:g} family-wise (Bonferroni)", ""]
    lines.append(f"{'label':<{width}}  n  mean diff  bound   verdict")
    for lab in v.labels:
        lines.append(f"{lab.label:<{width}}  {lab.n}  {_fmt(lab.mean_difference):>9}  "
                     f"{_fmt(lab.bound):>6}  {lab.verdict}{'  (' + lab.note + ')' if lab.note else ''}")
    counts = Counter(r.verdict for r in rows)
    lines += ["", "runs: " + ", ".join(f"{counts[x]} {x}" for x in RUN_VERDICTS if counts[x])]
    envs: dict[str, set] = {}
    for r in rows:
        for key, pair in r.environment.items():
            envs.setdefault(key, set()).add(pair)
    for key, pairs in sorted(envs.items()):
        shown = "; ".join(f"{a} here vs {b} in the reference" for a, b in sorted(pairs, key=str)[:3])
        lines.append(f"environment differs: {key}: {shown}")
    if not envs and rows:
        lines.append("environment: the same code, packages, machine facts and threads as the reference")
    lines += ["", f"verdict: {v.verdict}", _explain(v, envs)]
    return "\n".join(lines)


def _explain(v: Verdict, envs: dict[str, set]) -> str:
    if v.verdict == "identical":
        return ("Every run is bit for bit the reference's: the kernels that ran here round as "
                "the reference's did (differing facts above, if any, did not change a bit).")
    if v.verdict == "consistent":
        software = {"code", "torch", "numpy", "python"}
        machine = ", ".join(sorted(k for k in envs if k not in software)) or "no recorded machine fact"
        code = ", ".join(sorted(k for k in envs if k in software))
        return (f"The runs are not bit-identical, as expected where {machine} differ: other kernels "
                "round differently and training carries the difference to the end"
                + (f" ({code} differ too, which may move numbers for other reasons)" if code else "")
                + ". No outcome flipped and no label moved more than "
                + ("the protocol's measured numerical noise allows" if v.noise.measured else
                   "the seed spread allows (the numerical noise was not measured: a weaker check)")
                + ": this machine reproduces the reference.")
    bad = [lab.label for lab in v.labels if lab.verdict == "inconsistent"]
    bad_keys = {lab.label for lab in v.labels if lab.verdict == "inconsistent"}
    runs = [f"{r.run_id} ({r.label}, seed {r.seed}: {r.note or r.verdict}"
            + (f", curves part at iteration {r.first_difference[0]}" if r.first_difference else "")
            + ")" for r in v.runs
            if r.verdict in ("inconsistent", "missing", "outside band") or r.label in bad_keys][:8]
    return (f"INCONSISTENT: a difference the numerical noise does not explain in {', '.join(bad)}. "
            + (f"Runs: {'; '.join(runs)}. " if runs else "")
            + "Look at what differs above (code, protocol, packages) before trusting either side.")
