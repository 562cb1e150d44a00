"""``python -m benchmark <command>``: list, run, status, report, leaderboard, compare, perf,
gpu-check (``python -m benchmark --help``; ``comhe-bench`` is the same command).

Every command validates everything it was given before it starts work or writes a file; a bad
input ends with one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from benchmark.records import NewerRecord, record_files

from benchmark import __version__
from benchmark.config import ConfigError
from benchmark.plugins import load_plugins


def _cmd_list(args) -> int:
    import models
    import regularizers

    from benchmark.data import datasets
    from benchmark.config import available_protocols, load_protocol
    from benchmark.suites import available_suites, load_suite

    def regularizer_lines(name):
        cls = regularizers.get(name)
        doc = inspect.getdoc(cls) if cls.__doc__ else ""  # its own, not the base class's
        yield " ".join(doc.split("\n\n")[0].split())
        for key, hp in cls.HPARAMS.items():
            default = "depends on the others" if hp.default is None else repr(hp.default)
            kind = getattr(hp.kind, "value", hp.kind)
            yield f"  {key} ({kind}, default {default}){': ' + hp.doc if hp.doc else ''}"

    def model_lines(name):
        d = models.describe(name)
        yield d["description"]
        for key, default in d["kwargs"].items():
            yield f"  {key} (default {default!r})"

    def dataset_lines(name):
        d = datasets.info(name)
        classes = d.num_classes if d.arg is None else f"<{d.arg}>"
        yield f"{d.description}; classes: {classes}; {'offline' if d.offline else 'needs files'}"

    sections = {
        "regularizers": (regularizers.available(), regularizer_lines),
        "models": (models.available(), model_lines),
        "datasets": (datasets.available(), dataset_lines),
        "protocols": (available_protocols(), lambda n: [load_protocol(n).description]),
        # descriptions only: a suite whose data is not on this machine is still listed
        "suites": (available_suites(), lambda n: [load_suite(n, validate=False).description]),
    }
    usage = {"models": ["timm:<any timm model name>"],
             "datasets": [datasets.info(n).usage for n in datasets.available() if datasets.info(n).arg]}
    for section, (names, details) in sections.items():
        if args.what not in (None, section):
            continue
        print(f"{section}:")
        for name in names + usage.get(section, []):
            print(f"  {name}")
            if args.verbose and name in names:
                for line in details(name):
                    if line:
                        print(f"      {line}")
    return 0


def _single_spec(args):
    from benchmark.config import RunSpec, load_protocol, parse_set, split_overrides

    missing = [f"--{k}" for k in ("protocol", "dataset", "model", "regularizer")
               if getattr(args, k) in (None, [])]
    if missing:
        raise ConfigError("run: give --suite, or all of --protocol --dataset --model --regularizer "
                          f"(missing {' '.join(missing)})")
    proto_over, model_kw, reg_kw = split_overrides(parse_set(args.set))
    protocol = load_protocol(args.protocol, proto_over)
    if args.label and len(args.regularizer) > 1:
        raise ConfigError("run: --label names one regularizer's runs; give one --regularizer with it")
    return [RunSpec(protocol=protocol, dataset=args.dataset, model=args.model,
                    regularizer=reg, seed=seed, model_kwargs=model_kw,
                    regularizer_hparams=reg_kw, label=args.label or "")
            for reg in args.regularizer for seed in args.seed]


def _suite_specs(args):
    return _staged(_load_suite(args), args)


def _load_suite(args):
    from benchmark.config import parse_set, split_overrides
    from benchmark.suites import load_suite

    sets = parse_set(args.set)
    _, _, reg_kw = split_overrides(sets)
    if reg_kw:  # a suite lists several regularizers: which one would a reg.* setting mean?
        raise ConfigError("--set reg.* applies to single runs; put a suite's hyper-parameters in "
                          "its file (regularizers: [{name: ..., hparams: {...}}])")
    # protocol fields and model.* keywords apply to every run of the suite
    suite = load_suite(args.suite, overrides=sets, profile=args.profile)
    if args.regularizer:
        suite = suite.with_regularizers(list(args.regularizer), baseline="weight_decay")
    return suite


def _staged(suite, args):
    """The suite's runs, or those of ``--stage`` (benchmark/tuning.py); the tune stage's
    results directory is <results>/tuning/ (``args.results`` is changed to it)."""
    from benchmark.tuning import stage_specs

    specs, results = stage_specs(suite, getattr(args, "stage", None), Path(args.results))
    args.results = str(results)
    return specs


def _cmd_run(args) -> int:
    from benchmark import training
    from benchmark.sweep.dispatch import execute
    from benchmark.sweep.slurm import SlurmOptions

    suite = _load_suite(args) if args.suite else None
    specs = _staged(suite, args) if suite else _single_spec(args)  # suites validate here
    if not args.suite:
        for spec in specs:  # every seed, before anything is created or runs
            training.validate(spec)
    slurm = None
    if args.executor == "slurm":
        slurm = SlurmOptions(partition=args.slurm_partition, timeout_min=args.timeout_min,
                             gpus_per_node=args.gpus_per_node, nodes=args.nodes,
                             cpus_per_task=args.cpus_per_task,
                             mem_gb=args.mem_gb, account=args.slurm_account, qos=args.slurm_qos,
                             constraint=args.slurm_constraint,
                             array_parallelism=args.array_parallelism,
                             signal_delay_s=args.slurm_signal_delay_s,
                             max_num_timeout=args.slurm_max_timeouts)
    # A single run takes the same path as a suite: lock, skip when finished, failure record.
    summary = execute(specs, Path(args.results), jobs=args.jobs, executor=args.executor,
                      slurm=slurm, retry_failed=args.retry_failed, progress=not args.no_progress,
                      pack_seeds=args.pack_seeds)
    if not summary.reporting:  # a rank > 0 under torchrun / Slurm: rank 0 reports
        return 0
    counts = summary.counts()
    if suite and args.stage == "tune" and not summary.jobs and counts["pending"] == counts["running"] == 0:
        _write_choice(suite, Path(args.results).parent)  # args.results is <results>/tuning here
    if args.suite or summary.jobs:
        print(summary)
        return 0 if summary.ok or summary.jobs else 1
    return _print_single_runs(specs, Path(args.results), summary)


def _write_choice(suite, results: Path) -> None:
    """Every tuning run has a record: pick each method's value (benchmark/tuning.py) and plot
    validation error against strength beside the choice file."""
    from benchmark.analysis.plots import plot_tuning
    from benchmark.analysis.choice import choose
    from benchmark.tuning import choice_path

    out = choose(suite, results)
    picked = ", ".join(f"{c['label']} {c['param']}={c['chosen']}" for c in out["choices"])
    print(f"choice ({out['metric']}, {len(out['seeds'])} seeds): {picked} -> {choice_path(results)}")
    for sp in out["spread"]:
        print(f"{sp['dataset']} {sp['model']}: paired SD of validation differences at the chosen "
              f"values {sp['sd_diff']} ({sp['df']} df) asks for {sp['seeds']} final seeds "
              f"[{sp['seeds_low']}, {sp['seeds_high']}] to detect 0.3 points at {sp['level']:.3g}")
    plot_tuning(out, choice_path(results).parent / "validation_curve")


def _print_single_runs(specs, results: Path, summary) -> int:
    """One line per run given without --suite; 0 when every one is complete."""
    from benchmark.records import load_record, record_path

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
        on = "val" if "val_acc" in final else "test"  # data.validation runs never see the test set
        print(f"[{spec.run_id}] {record['status']} ({how}): {on} accuracy {final[on + '_acc']:.2f}% "
              f"(error {final[on + '_error']:.2f}%) at iteration {final['iteration']}, median step "
              f"{'n/a' if step is None else f'{step:.1f}'} ms -> {path}")
    return 0 if ok else 1


def _cmd_status(args) -> int:
    from benchmark.sweep.status import format_status, suite_status

    if not args.suite:
        raise ConfigError("status needs --suite NAME_OR_PATH")
    specs = _suite_specs(args)
    print(format_status(suite_status(specs, Path(args.results), watch=args.watch)))
    return 0


def _report_filter(runs, args):
    """The runs selected by --suite / --protocol / --commit / --where (one-line errors)."""
    def keep(mask):
        return runs[mask.fillna(False).astype(bool)]

    if args.suite:
        runs = keep(runs["suite"] == args.suite)
    if args.protocol:
        runs = keep((runs["protocol"] == args.protocol)
                    | runs["protocol_hash"].fillna("").str.startswith(args.protocol))
    if args.commit:
        runs = keep(runs["code"].fillna("").str.startswith(args.commit)
                    | runs["git_commit"].fillna("").str.startswith(args.commit))
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or key not in runs:
            raise ConfigError(f"--where expects COLUMN=VALUE with a store column, got '{item}' "
                              f"(columns: {', '.join(runs.columns)})")
        runs = keep(runs[key].astype(str) == value)
    return runs


def _cmd_report(args) -> int:
    from benchmark.analysis.leaderboard import interim_notes
    from benchmark.analysis.report import (prepare_report, render_leaderboard, write_report,
                                           write_tuning_page)
    from benchmark.analysis.store import STORE_DIR, build_store, load_store, save_store, store_losses

    results = Path(args.results)
    if not results.is_dir():
        raise ConfigError(f"results directory '{results}' does not exist")
    skipped: list = []
    from_records = bool(record_files(results))
    runs, curves = build_store(results, skipped) if from_records else load_store(results)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    selected = _report_filter(runs, args)
    if selected.empty:
        raise ConfigError(f"no run records under '{results}' match the filters"
                          if len(runs) else f"no run records under '{results}'")
    # Everything is computed (and a set-up mix refused) before the first file is written.
    prepared = prepare_report(selected, include_stuck=args.include_stuck,
                              allow_mixed_code=args.allow_mixed_code)
    out = Path(args.out) if args.out else results / "report"
    written = []
    store_dir = (out if args.out else results) / STORE_DIR
    if not from_records:  # the store is the only source: never rewrite it in place
        if args.out:
            written += list(save_store(results, store_dir, tables=(runs, curves)).values())
    else:
        lost = store_losses(store_dir, runs)
        if lost:
            print(f"kept {store_dir}: it holds {len(lost)} run(s) that the records under "
                  f"'{results / 'runs'}' lack (e.g. {lost[0]}); not replaced", file=sys.stderr)
        else:
            written += list(save_store(results, store_dir, tables=(runs, curves)).values())
    if args.leaderboard:  # before the figures: a plotting problem cannot cost the leaderboard
        written.append(render_leaderboard(selected, args.leaderboard,
                                          include_stuck=args.include_stuck,
                                          allow_mixed_code=args.allow_mixed_code))
    curves = curves[curves["run_id"].isin(selected["run_id"])]
    tuned = _tuning_of(results, out / "tuning.md")
    interim = interim_notes(tuned, selected)  # a tuned suite's final stage not yet complete
    prepared["notes"] = [*prepared["notes"], *interim]
    written += write_report(selected, curves, out, prepared=prepared)
    if tuned is not None:  # a tuned suite: what each method's setting was chosen from
        written += write_tuning_page(tuned["choice"], out, tuned["plots"])
    for path in written:
        print(path)
    for note in interim:
        print(note, file=sys.stderr)
    if prepared["suggested_seeds"]:
        print(f"suggested seeds per label: {prepared['suggested_seeds']} (to detect 0.3 points "
              f"with the observed spread; see {out / 'table.md'})")
    return 0


def _tuning_of(results: Path, out: Path):
    """The leaderboard's tuning context of a results directory whose suite was tuned (a
    ``tuning/choice.yaml`` beside its records), None otherwise; plot links relative to ``out``."""
    import yaml

    from benchmark.analysis.leaderboard import tuning_context
    from benchmark.analysis.plots import tuning_plot_path
    from benchmark.tuning import choice_path

    path = choice_path(results)
    if not path.is_file():
        return None
    choice = yaml.safe_load(path.read_text()) or {}
    plots = {}
    for c in choice.get("choices") or []:
        png = tuning_plot_path(path.parent / "validation_curve", c["dataset"], c["model"])
        if png.is_file():
            plots[(c["dataset"], c["model"])] = Path(os.path.relpath(png, out.resolve().parent)).as_posix()
    seeds, about = _suite_facts(choice.get("suite"))
    return {**tuning_context(choice, plots, seeds, about), "choice": choice}


def _suite_facts(suite_name) -> tuple[int | None, str | None]:
    """The final stage's seeds per method and the description of the suite file the choice was
    made for ((None, None): that suite is not loadable here, e.g. a plugin's or a renamed file;
    then completeness is not judged and no description is shown)."""
    from benchmark.suites import load_suite

    try:
        suite = load_suite(str(suite_name), validate=False) if suite_name else None
    except ConfigError:
        return None, None
    return (len(suite.seeds), suite.description or None) if suite else (None, None)


def _cmd_leaderboard(args) -> int:
    from benchmark.analysis.report import render_leaderboards
    from benchmark.analysis.store import build_store, load_store

    dirs = [Path(d) for d in args.results]
    seen: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"results directory '{d}' does not exist")
        if d.resolve() in seen:
            raise ConfigError(f"--results '{d}' is given twice; each directory is one set of sections")
        seen.add(d.resolve())
    groups = []
    for d in dirs:  # every directory is read and checked before the file is written
        skipped: list = []
        # the records; a store alone when there are none (a copied report); neither: no runs
        from_store = not record_files(d) and (d / "store").is_dir()
        runs, _ = load_store(d) if from_store else build_store(d, skipped)
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        if runs.empty:
            raise ConfigError(f"no run records under '{d}'")
        groups.append((d.as_posix(), runs))
    history = []
    for d in map(Path, args.history):  # superseded tables: listed with a link, not re-ranked
        if not d.is_dir():
            raise ConfigError(f"--history directory '{d}' does not exist")
        if d.resolve() in seen:
            raise ConfigError(f"'{d}' is given as --results and --history; it is one or the other")
        runs, _ = build_store(d, [])
        if runs.empty:
            raise ConfigError(f"no run records under --history '{d}'")
        table = next((t for t in (d / "report" / "table.md", d.parent / "report" / "table.md")
                      if t.is_file()), None)
        link = (Path(os.path.relpath(table.resolve(), Path(args.out).resolve().parent)).as_posix()
                if table else None)
        history.append((d.as_posix(), runs, link))
    tunings = [_tuning_of(d, Path(args.out)) for d in dirs]
    print(render_leaderboards(groups, args.out, include_stuck=args.include_stuck,
                              allow_mixed_code=args.allow_mixed_code, tunings=tunings,
                              history=history))
    return 0


def _cmd_compare(args) -> int:
    from benchmark.analysis.compare import compare_dirs, format_comparison
    from benchmark.records import iter_records

    for flag, path in (("--results", args.results), ("--reference", args.reference)):
        if not any(True for _ in iter_records(path)):
            raise ConfigError(f"{flag}: no run records under '{path}'")
    verdict = compare_dirs(args.results, args.reference, match=args.match, rtol=args.rtol,
                           atol=args.atol, subset=args.subset)
    print(format_comparison(verdict, args.results, args.reference))
    return 1 if verdict.verdict == "inconsistent" and not args.report_only else 0


def _cmd_sensitivity(args) -> int:
    from benchmark.records import iter_records
    from benchmark.analysis.sensitivity import perturbation, summarize, train_perturbed, write
    from benchmark.suites import load_suite

    suite = load_suite(args.suite, profile=args.profile)  # validates before anything runs
    if suite.tuning is not None and not args.no_train:
        # its runs are a stage's (`run --stage final` reads the choice file); not built yet
        raise ConfigError(f"sensitivity: suite '{suite.name}' has a tuning section, and training "
                          "a tuned suite's final stage again is not built yet; rerun cells as "
                          "single runs under the perturbation and check them with `compare "
                          "--subset` (docs/sweeps.md, \"Tuning stages\")")
    name = Path(args.suite).stem + (f"-{args.profile}" if args.profile else "")
    base = Path(args.base or Path("results") / name / "runs")
    out = Path(args.out or Path("results") / name / "sensitivity")
    if not any(True for _ in iter_records(base)):
        raise ConfigError(f"--base: no run records under '{base}' (train the reference first: "
                          f"`make reference`, or pass --base DIR)")
    protocol = suite.protocol
    pert = perturbation(args.perturb, protocol.runtime.threads)
    if not args.no_train:
        print(f"sensitivity: training {args.suite} again under {pert['what']} into {out / 'runs'}")
        train_perturbed(args.suite, args.profile, out / "runs", pert, args.jobs,
                        progress=not args.no_progress)
    summary = summarize(base, out / "runs", pert)
    write(summary, out, name)
    print((out / "summary.md").read_text())
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help (when it has one); descriptions keep their breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, [], False, argparse.SUPPRESS) and "default" not in text:
            text += f" (default: {action.default})"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__.splitlines()[0],
                                formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"comhe-bench {__version__}")
    # --plugin works before or after the command (two destinations: a subparser's default would
    # otherwise overwrite what was given before the command)
    plugin = argparse.ArgumentParser(add_help=False)
    plugin_help = ("module name or .py file that registers regularizers, models or datasets "
                   "(repeatable); "
                   "its code runs with your permissions, here and in every worker process")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help=plugin_help)
    plugin.add_argument("--plugin", action="append", default=[], dest="plugin_after",
                        metavar="MODULE_OR_FILE", help=plugin_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None):
        return sub.add_parser(name, help=help, description=description or help,
                              formatter_class=_Help, parents=[plugin])

    ls = command("list", "registered regularizers, models, datasets, protocols, suites")
    ls.add_argument("what", nargs="?",
                    choices=["regularizers", "models", "datasets", "protocols", "suites"],
                    help="only this section (default: all)")
    ls.add_argument("-v", "--verbose", action="store_true",
                    help="descriptions, hyper-parameters and model keywords with their defaults")

    def grid_args(sp):
        sp.add_argument("--suite", help="suite name (`list suites`) or YAML path")
        sp.add_argument("--profile", help="run a suite's grid under another profile (smoke: "
                                          "tiny, offline; gpu: paper scale where defined)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a protocol field (iterations=200, optimizer.lr=0.05), a "
                             "model keyword (model.width=0.25; with --suite: every model) or, for "
                             "single runs, a regularizer hyper-parameter (reg.proj_dim=30)")
        sp.add_argument("--results", default="results/runs",
                        help="results directory: DIR/<run_id>.json per run, with checkpoints/, "
                             "locks/ and logs/ beside them")
        sp.add_argument("--regularizer", action="append", default=[], metavar="NAME",
                        help="repeatable: the runs' regularizers (single runs), or the ones a "
                             "suite is restricted to (its weight_decay baseline is kept)")
        sp.add_argument("--stage", choices=["tune", "final"],
                        help="a suite with a tuning section: 'tune' trains its grid on the "
                             "validation split into RESULTS/tuning/ and writes "
                             "RESULTS/tuning/choice.yaml; 'final' trains each method's chosen "
                             "value on the full training set into RESULTS/")

    run = command("run", "one run, several, or a whole suite",
                  "Train runs into a results directory. Finished runs are skipped, interrupted "
                  "ones resume from their checkpoint; Ctrl-C stops cleanly (rerun to resume).")
    grid_args(run)
    single = run.add_argument_group("single runs (without --suite)")
    single.add_argument("--protocol", help="protocol name (`list protocols`) or YAML path")
    single.add_argument("--dataset", help="dataset name (`list datasets`)")
    single.add_argument("--model", help="model name (`list models`) or timm:<name>")
    single.add_argument("--seed", type=int, nargs="+", default=[0], metavar="SEED",
                        help="one run per seed (seeds are the replicates)")
    single.add_argument("--label", help="display name of these runs in tables")
    run.add_argument("--jobs", type=int, default=1,
                     help="runs at once (one process and one GPU each); 0 = one per visible GPU")
    run.add_argument("--pack-seeds", type=int, default=1, metavar="S",
                     help="train up to S runs that differ only by seed as one packed program "
                          "(many seeds per GPU; docs/performance.md)")
    run.add_argument("--executor", choices=["local", "slurm"], default="local",
                     help="where runs execute: this machine, or a Slurm job array")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun runs whose record says failed (input-caused failures rerun anyway)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    run.add_argument("--data-dir", help="where datasets live (default: $COMHE_DATA or ./data)")
    run.add_argument("--download", action="store_true",
                     help="allow torchvision to download datasets (needs a network)")
    slurm = run.add_argument_group("Slurm (with --executor slurm, through submitit)")
    slurm.add_argument("--slurm-partition", help="partition to submit to (default: the cluster's)")
    slurm.add_argument("--slurm-account", help="account to charge")
    slurm.add_argument("--slurm-qos", help="quality of service")
    slurm.add_argument("--slurm-constraint", help="node feature constraint")
    slurm.add_argument("--timeout-min", type=int, default=240, help="time limit per task")
    slurm.add_argument("--slurm-signal-delay-s", type=int, default=90,
                       help="seconds before the limit at which a task checkpoints and requeues")
    slurm.add_argument("--slurm-max-timeouts", type=int, default=3,
                       help="requeues after time-outs before a run is recorded as failed")
    slurm.add_argument("--gpus-per-node", type=int, default=1,
                       help="GPUs per node of a run's job (0: CPU only); above 1 (or with --nodes "
                            "above 1) one task per GPU trains the run with DDP")
    slurm.add_argument("--nodes", type=int, default=1,
                       help="nodes per run: one job of nodes x gpus-per-node tasks (DDP)")
    slurm.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task")
    slurm.add_argument("--mem-gb", type=float, help="memory per task (default: the cluster's)")
    slurm.add_argument("--array-parallelism", type=int, default=64,
                       help="tasks of the array running at once")

    st = command("status", "done / running / failed / pending runs of a suite (and Slurm's view)")
    grid_args(st)
    st.add_argument("--watch", action="store_true",
                    help="refresh until nothing is running or pending")

    rep = command("report", "store, tables, plots, paper comparison from run records")
    rep.add_argument("--results", default="results/runs", help="results directory of the runs")
    rep.add_argument("--suite", help="only the records of this suite")
    rep.add_argument("--out", help="output directory (default: <results>/report)")
    rep.add_argument("--leaderboard", help="also regenerate this leaderboard file")
    rep.add_argument("--protocol", help="only runs of this protocol (name or content-hash prefix)")
    rep.add_argument("--commit", help="only runs of this code version (git commit prefix)")
    rep.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                     help="only runs whose store column has this value (repeatable), e.g. "
                          "packed_seeds=1")
    rep.add_argument("--allow-mixed-code", action="store_true",
                     help="pair runs of different code versions in one cell (said under the table)")
    rep.add_argument("--include-stuck", action="store_true",
                     help="let stuck runs enter means and tests (they are always counted)")
    lb = command("leaderboard", "one leaderboard file from several results directories",
                 "Render one leaderboard from the run records of several results directories "
                 "(e.g. one per suite), each compared on its own, in the given order, every "
                 "section headed by its set-up.")
    lb.add_argument("--results", action="append", required=True, metavar="DIR",
                    help="a results directory (its records or its store); repeatable, in the "
                         "order the sections should appear")
    lb.add_argument("--history", action="append", default=[], metavar="DIR",
                    help="a superseded table's results directory: listed at the end with its "
                         "set-up and a link to its report table, not shown as a current result; "
                         "repeatable")
    lb.add_argument("--out", default="results/leaderboard.md", help="the leaderboard file to write")
    lb.add_argument("--allow-mixed-code", action="store_true",
                    help="pair runs of different code versions in one cell (said under the title)")
    lb.add_argument("--include-stuck", action="store_true",
                    help="let stuck runs enter means and tests (they are always counted)")
    cmp = command("compare", "did these runs reproduce a reference? identical / consistent / "
                  "inconsistent",
                  "Match the runs of two results directories and give each run, each label and the "
                  "whole comparison a verdict: identical (bit for bit), consistent (within the "
                  "protocol's measured numerical noise: <reference>/../sensitivity/summary.json, or "
                  "<reference>/sensitivity/summary.json for a tuned suite's final records) or "
                  "inconsistent (an outcome flip, a missing run, or a label whose mean moved beyond "
                  "that noise). Exits 1 on inconsistent.")
    cmp.add_argument("--results", required=True, help="the runs to check")
    cmp.add_argument("--reference", required=True, help="the runs to check them against")
    cmp.add_argument("--match", default="run_id", choices=["run_id", "label"],
                     help="pair runs by run id, or by (dataset, model, label, seed) for runs whose "
                          "set-ups differ on purpose")
    cmp.add_argument("--rtol", type=float, default=1e-4,
                     help="relative tolerance per curve value for where two runs part")
    cmp.add_argument("--atol", type=float, default=1e-6,
                     help="absolute tolerance per curve value for where two runs part")
    cmp.add_argument("--subset", action="store_true",
                     help="RESULTS reruns a few of the reference's runs (two cells on another "
                          "machine, say): reference runs it lacks are left out, not counted missing")
    cmp.add_argument("--report-only", action="store_true",
                     help="exit 0 even when the comparison is inconsistent")
    sens = command("sensitivity", "a suite's numerical noise: every run again under a float "
                   "perturbation",
                   "Train every run of a suite again with the kernels of a lower instruction-set "
                   "level (--perturb isa) or another thread count (--perturb threads), and set the "
                   "change of final test error against the spread across seeds; list every "
                   "outcome flip. Writes OUT/summary.json and OUT/summary.md, which `compare` reads.")
    sens.add_argument("--suite", required=True, help="suite name or YAML file")
    sens.add_argument("--profile", help="the suite's profile, if any")
    sens.add_argument("--base", help="the unperturbed runs (default: results/<suite>/runs)")
    sens.add_argument("--out", help="where the perturbed runs and the summary go "
                                    "(default: results/<suite>/sensitivity)")
    sens.add_argument("--perturb", default="isa", choices=["isa", "threads"],
                      help="the perturbation")
    sens.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    sens.add_argument("--no-train", action="store_true",
                      help="rebuild the summary from the perturbed runs already there")
    sens.add_argument("--no-progress", action="store_true", help="plain log lines, no bars")
    perf = command("perf", "training-step time per regularizer, as ratios")
    perf.add_argument("--model", default="cnn9", help="model to time")
    perf.add_argument("--batch-size", type=int, default=128, help="batch size")
    perf.add_argument("--steps", type=int, default=20, help="timed steps per round")
    perf.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    perf.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    perf.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                      help="where to time")
    perf.add_argument("--compile", default="auto",
                      choices=["auto", "off", "default", "reduce-overhead", "max-autotune", "graph"],
                      help="runtime.compile for the measured steps (auto: reduce-overhead on CUDA)")
    perf.add_argument("--pack-seeds", type=int, default=1, metavar="S",
                      help="also time S seeds packed into one program, per regularizer")
    perf.add_argument("--regularizers", default="default",
                      help="'default' (weight_decay, hs_mhe, rp_comhe), 'all', or a comma list")
    perf.add_argument("--protocol", default="paper_cifar", help="protocol of the timed runs")
    perf.add_argument("--dataset", default=None,
                      help="dataset of the timed runs (default synthetic:<--classes>)")
    perf.add_argument("--classes", type=int, default=100, help="classes of the synthetic data")
    perf.add_argument("--width", type=float, default=None, help="model width (cnn9: 0.25 for CPU tables)")
    perf.add_argument("--threads", default=None,
                      help="torch thread counts, interleaved in every round, e.g. '1,2'")
    perf.add_argument("--bare", action="store_true",
                      help="also time a bare PyTorch loop of the same model (the engine's floor)")
    perf.add_argument("--eval-rounds", type=int, default=0,
                      help="also time evaluation of the test set against a bare no_grad loop")
    perf.add_argument("--work", action="store_true",
                      help="also count each step's FLOPs and random numbers (the arithmetic's floor)")
    perf.add_argument("--registry-defaults", action="store_true",
                      help="regularizers at their registry defaults (the suites' settings)")
    perf.add_argument("--out", help="write the result as JSON here")
    command("gpu-check", "tests, step-time ratios and real-data runs on a CUDA device",
            "The one-call GPU check; options after `--` (see `python -m benchmark gpu-check -- "
            "--help`).").add_argument("gpu_args", nargs=argparse.REMAINDER,
                                      help="arguments of the GPU check")
    return p


def _cmd_perf(args) -> int:
    from benchmark.tools.perf import main as perf_main

    return perf_main(args)


def _cmd_gpu_check(args) -> int:
    from benchmark.tools.gpu_check import main as gpu_check_main

    extra = args.gpu_args[1:] if args.gpu_args[:1] == ["--"] else args.gpu_args
    return gpu_check_main(extra)


def main(argv: list[str] | None = None) -> int:
    import shlex

    from benchmark.stopping import DiskFull, Interrupted

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["COMHE_DATA"] = args.data_dir
    if getattr(args, "download", False):
        os.environ["COMHE_DOWNLOAD"] = "1"
    try:
        load_plugins([*args.plugin, *args.plugin_after])
        return {"list": _cmd_list, "run": _cmd_run, "status": _cmd_status, "report": _cmd_report,
                "leaderboard": _cmd_leaderboard, "compare": _cmd_compare, "perf": _cmd_perf,
                "sensitivity": _cmd_sensitivity,
                "gpu-check": _cmd_gpu_check}[args.command](args)
    except (ConfigError, NewerRecord) as exc:
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
