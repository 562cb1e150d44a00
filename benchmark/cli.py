"""``python -m benchmark <command>``: list, run, status, report.

Every command validates everything it was given before it starts work or writes a file; a bad
input ends with one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError
from .plugins import load_plugins

def _cmd_list(args) -> int:
    import models
    import regularizers

    from .config import available_protocols
    from .data import DATASETS
    from .suites import available_suites

    sections = {
        "regularizers": regularizers.available(),
        "models": list(models.available()) + ["timm:<any timm model name>"],
        "datasets": list(DATASETS) + ["synthetic:<classes>"],
        "protocols": available_protocols(),
        "suites": available_suites(),
    }
    for name, items in sections.items():
        if args.what in (None, name):
            print(f"{name}:")
            for item in items:
                print(f"  {item}")
    return 0


def _single_spec(args):
    from .config import RunSpec, load_protocol, parse_set, split_overrides

    missing = [f"--{k}" for k in ("protocol", "dataset", "model", "regularizer")
               if getattr(args, k) is None]
    if missing:
        raise ConfigError(f"run: give --suite, or all of --protocol --dataset --model --regularizer (missing {' '.join(missing)})")
    proto_over, model_kw, reg_kw = split_overrides(parse_set(args.set))
    protocol = load_protocol(args.protocol, proto_over)
    return [RunSpec(protocol=protocol, dataset=args.dataset, model=args.model,
                    regularizer=args.regularizer, seed=seed, model_kwargs=model_kw,
                    regularizer_hparams=reg_kw, label=args.label or "")
            for seed in args.seed]


def _suite_specs(args):
    from .config import parse_set, split_overrides
    from .suites import load_suite

    proto_over, model_kw, reg_kw = split_overrides(parse_set(args.set))
    if model_kw or reg_kw:
        raise ConfigError("--set model.* / reg.* apply to single runs; put them in the suite file")
    suite = load_suite(args.suite, overrides=proto_over, profile=args.profile)
    if args.regularizer:
        suite = suite.with_regularizers([args.regularizer], baseline="weight_decay")
    return suite.expand()


def _cmd_run(args) -> int:
    from . import engine
    from .executors import SlurmOptions
    from .runner import run_suite

    specs = _suite_specs(args) if args.suite else _single_spec(args)  # suites validate here
    if not args.suite:
        for spec in specs:  # every seed, before anything is created or runs
            engine.validate(spec)
    slurm = None
    if args.executor == "slurm":
        slurm = SlurmOptions(partition=args.slurm_partition, timeout_min=args.timeout_min,
                             gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                             mem_gb=args.mem_gb, account=args.slurm_account, qos=args.slurm_qos,
                             constraint=args.slurm_constraint,
                             array_parallelism=args.array_parallelism)
    # A single run takes the same path as a suite: lock, skip when finished, failure record.
    summary = run_suite(specs, Path(args.results), jobs=args.jobs, executor=args.executor,
                        slurm=slurm, retry_failed=args.retry_failed, progress=not args.no_progress,
                        pack_seeds=args.pack_seeds)
    if args.suite or summary.jobs:
        print(summary)
        return 0 if summary.ok or summary.jobs else 1
    return _print_single_runs(specs, Path(args.results), summary)


def _print_single_runs(specs, results: Path, summary) -> int:
    """One line per run given without --suite; 0 when every one is complete."""
    from .records import load_record, record_path

    ok = True
    for spec in specs:
        record = load_record(record_path(results, spec.run_id))
        path = record_path(results, spec.run_id)
        if record is None:
            ok = False
            print(f"[{spec.run_id}] not finished (held by another process?) -> {path}")
            continue
        how = "run now" if spec.run_id in summary.executed else "already recorded"
        final = record["final"]
        if record["status"] == "failed" or not final:
            ok = False
            print(f"[{spec.run_id}] {record['status']} ({how}): {record['reason']} -> {path}")
            continue
        ok = ok and record["status"] == "complete"
        step = record["median_step_ms"]
        print(f"[{spec.run_id}] {record['status']} ({how}): test accuracy {final['test_acc']:.2f}% "
              f"(error {final['test_error']:.2f}%) at iteration {final['iteration']}, median step "
              f"{'n/a' if step is None else f'{step:.1f}'} ms -> {path}")
    return 0 if ok else 1


def _cmd_status(args) -> int:
    from .status import format_status, suite_status

    if not args.suite:
        raise ConfigError("status needs --suite NAME_OR_PATH")
    specs = _suite_specs(args)
    print(format_status(suite_status(specs, Path(args.results), watch=args.watch)))
    return 0


def _cmd_report(args) -> int:
    from .report import render_leaderboard, write_report
    from .store import save_store

    results = Path(args.results)
    out = Path(args.out) if args.out else results / "report"
    written = list(save_store(results, results / "store").values())
    from .store import load_store

    runs, curves = load_store(results)
    if args.suite:
        runs = runs[runs["suite"] == args.suite]
        curves = curves[curves["run_id"].isin(runs["run_id"])]
    if runs.empty:
        raise ConfigError(f"no complete run records under '{results}'"
                          + (f" for suite '{args.suite}'" if args.suite else ""))
    written += write_report(runs, curves, out)
    if args.leaderboard:
        written.append(render_leaderboard(runs, args.leaderboard))
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--plugin", action="append", default=[],
                   help="module name or .py file that registers regularizers (repeatable); "
                        "its code runs with your permissions, here and in every worker")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="registered regularizers, models, datasets, protocols, suites")
    ls.add_argument("what", nargs="?",
                    choices=["regularizers", "models", "datasets", "protocols", "suites"])

    def grid_args(sp):
        sp.add_argument("--suite", help="suite name or YAML path")
        sp.add_argument("--profile", help="run a suite's grid under another profile (e.g. smoke)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a protocol field (iterations=200, optimizer.lr=0.05), "
                             "a model kwarg (model.width=0.25) or a regularizer hparam (reg.proj_dim=30)")
        sp.add_argument("--results", default="results/runs", help="results directory")
        sp.add_argument("--regularizer", help="regularizer name: a single run, or add to / restrict a suite "
                             "(the suite's weight_decay baseline is kept)")

    run = sub.add_parser("run", help="one run, or a whole suite")
    grid_args(run)
    run.add_argument("--protocol")
    run.add_argument("--dataset")
    run.add_argument("--model")
    run.add_argument("--seed", type=int, nargs="+", default=[0])
    run.add_argument("--label", help="display name in tables")
    run.add_argument("--jobs", type=int, default=1,
                     help="runs at once (one process and one GPU each); 0 = one per visible GPU")
    run.add_argument("--pack-seeds", type=int, default=1, metavar="S",
                     help="train up to S runs that differ only by seed as one packed program "
                          "(many seeds per GPU; docs/performance.md)")
    run.add_argument("--executor", choices=["local", "slurm"], default="local")
    slurm = run.add_argument_group("Slurm (with --executor slurm, through submitit)")
    slurm.add_argument("--slurm-partition")
    slurm.add_argument("--slurm-account")
    slurm.add_argument("--slurm-qos")
    slurm.add_argument("--slurm-constraint")
    slurm.add_argument("--timeout-min", type=int, default=240)
    slurm.add_argument("--gpus-per-node", type=int, default=1)
    slurm.add_argument("--cpus-per-task", type=int, default=8)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--array-parallelism", type=int, default=64)
    run.add_argument("--retry-failed", action="store_true")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--data-dir", help="where datasets live (default $COMHE_DATA or ./data)")
    run.add_argument("--download", action="store_true", help="allow torchvision to download datasets")

    st = sub.add_parser("status", help="done / running / failed / pending runs of a suite")
    grid_args(st)
    st.add_argument("--watch", action="store_true")

    rep = sub.add_parser("report", help="store, tables, plots, paper comparison from run records")
    rep.add_argument("--results", default="results/runs")
    rep.add_argument("--suite", help="only the records of this suite")
    rep.add_argument("--out", help="output directory (default: <results>/report)")
    rep.add_argument("--leaderboard", help="also regenerate this leaderboard file")
    perf = sub.add_parser("perf", help="training-step time per regularizer, as ratios")
    perf.add_argument("--model", default="cnn9")
    perf.add_argument("--batch-size", type=int, default=128)
    perf.add_argument("--steps", type=int, default=20, help="timed steps per round")
    perf.add_argument("--warmup", type=int, default=5)
    perf.add_argument("--rounds", type=int, default=3)
    perf.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    perf.add_argument("--compile", default="auto",
                      choices=["auto", "off", "default", "reduce-overhead", "max-autotune", "graph"],
                      help="runtime.compile for the measured steps (auto: reduce-overhead on CUDA)")
    perf.add_argument("--pack-seeds", type=int, default=1, metavar="S",
                      help="also time S seeds packed into one program, per regularizer")
    perf.add_argument("--regularizers", default="default",
                      help="'default' (weight_decay, hs_mhe, rp_comhe), 'all', or a comma list")
    perf.add_argument("--out", help="write the result as JSON here")
    return p


def _cmd_perf(args) -> int:
    from .perf import main as perf_main

    return perf_main(args)


def main(argv: list[str] | None = None) -> int:
    import shlex

    from .stopping import DiskFull, Interrupted

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["COMHE_DATA"] = args.data_dir
    if getattr(args, "download", False):
        os.environ["COMHE_DOWNLOAD"] = "1"
    try:
        load_plugins(args.plugin)
        return {"list": _cmd_list, "run": _cmd_run, "status": _cmd_status,
                "report": _cmd_report, "perf": _cmd_perf}[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as stop:
        name = str(stop) if isinstance(stop, Interrupted) else "SIGINT"
        print(f"interrupted ({name}): finished runs are kept, running ones checkpointed; resume "
              f"with: python -m benchmark {shlex.join(argv)}", file=sys.stderr)
        return stop.exit_code if isinstance(stop, Interrupted) else 130
    except DiskFull as exc:
        print(f"error: {exc}; the sweep stopped (finished runs are kept): free space and rerun "
              f"python -m benchmark {shlex.join(argv)}", file=sys.stderr)
        return 1
