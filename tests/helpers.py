"""What several test modules share, in one place: the repository root, tiny run specs, the fake
engine, the command line in a subprocess, record copying, the switch of the real-Slurm tests,
and a tiny ImageNet folder.

The fake engine (``fake_train``) stands in for ``benchmark.training.train``: it sleeps
(FAKE_TRAIN_SLEEP seconds, split around a checkpoint write), appends ``start``/``end`` lines to
FAKE_TRAIN_LOG, and writes a complete record atomically. Subprocesses name it by ``FAKE_TRAIN``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.config import ConfigError, Protocol, RunSpec, load_protocol
from benchmark.records import (
    REQUIRED_FIELDS,
    atomic_write,
    checkpoint_path,
    record_files,
    record_path,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# tiny runs


def tiny_spec(regularizer: str = "weight_decay", seed: int = 0, *, dataset: str = "digits",
              model: str = "cnn9", hparams: dict | None = None, width: float | None = 0.125,
              suite: str | None = None, **proto) -> RunSpec:
    """A run of the ``smoke`` protocol with ``proto`` overrides (dotted keys as for ``--set``),
    CNN-9 at width 1/8 on digits unless told otherwise (``width=None``: the model's default)."""
    return RunSpec(load_protocol("smoke", proto), dataset, model, regularizer, seed,
                   model_kwargs={} if width is None else {"width": width},
                   regularizer_hparams=hparams or {}, suite=suite)


# --------------------------------------------------------------------------------------------
# the fake engine

KNOWN = {"datasets": {"synthetic", "digits", "cifar10", "cifar100"}, "models": {"cnn9"},
         "regularizers": {"weight_decay", "so", "srip", "mhe", "hs_mhe", "rp_comhe", "ap_comhe",
                          "adv_comhe", "g_comhe", "boom"}}
FAKE_TRAIN = "tests.helpers:fake_train"


def fake_validate(spec: RunSpec) -> None:
    if spec.dataset not in KNOWN["datasets"] and not spec.dataset.startswith("synthetic:"):
        raise ConfigError(f"unknown dataset '{spec.dataset}'")
    if spec.model not in KNOWN["models"]:
        raise ConfigError(f"unknown model '{spec.model}' (available: cnn9)")
    if spec.regularizer not in KNOWN["regularizers"]:
        raise ConfigError(f"unknown regularizer '{spec.regularizer}'")


def _log(line: str) -> None:
    log = os.environ.get("FAKE_TRAIN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")
            f.flush()


def fake_train(spec: RunSpec, results_dir: Path, *, progress: bool = True) -> dict:
    sleep = float(os.environ.get("FAKE_TRAIN_SLEEP", "0.02"))
    fake_validate(spec)
    _log(f"start {spec.run_id} {os.getpid()}")
    if spec.regularizer == "boom":
        raise RuntimeError("boom at step 3\nsecond line")
    ckpt = checkpoint_path(results_dir, spec.run_id)
    resumed = ckpt.exists()
    if not resumed:
        time.sleep(sleep / 2)
        atomic_write(ckpt, b"half-way")
    time.sleep(sleep / 2)
    it = [0, 5, 10]
    record = {
        "schema_version": 1, "run_id": spec.run_id, "suite": spec.suite,
        "label": spec.display_label, "status": "complete", "reason": None,
        "config": spec.identity(), "seed": spec.seed,
        "git": {"commit": "abc123" if spec.seed % 2 == 0 else "def456", "dirty": False},
        "versions": {"python": "3.11", "torch": "2.14.1"}, "device": "cpu (fake)",
        "synthetic": spec.dataset.startswith("synthetic"),
        "notes": ["resumed from checkpoint"] if resumed else [],
        "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:00:01+00:00",
        "wall_time_s": sleep, "median_step_ms": 1.5,
        "curves": {"iteration": it, "test_acc": [10.0, 50.0, 60.0 + spec.seed],
                   "test_error": [90.0, 50.0, 40.0 - spec.seed], "train_loss": [2.3, 1.0, 0.5],
                   "penalty": [0.0, 0.1, 0.1], "energy_total": [1.0, 0.9, 0.8],
                   "energy": {"conv1": [0.5, 0.4, 0.3]}},
        "final": {"iteration": 10, "test_acc": 60.0 + spec.seed, "test_error": 40.0 - spec.seed,
                  "train_loss": 0.5, "penalty": 0.1, "n_test": 100},
    }
    assert all(k in record for k in REQUIRED_FIELDS)
    write_json_atomic(record_path(results_dir, spec.run_id), record)
    ckpt.unlink(missing_ok=True)
    _log(f"end {spec.run_id} {os.getpid()}")
    return record


def make_specs(n_seeds: int = 2, regularizers=("weight_decay", "hs_mhe", "rp_comhe"),
               suite: str = "fake") -> list[RunSpec]:
    """Specs for the fake engine (never trained for real): 3 regularizers x 2 seeds."""
    protocol = Protocol(name="fake", iterations=10, eval_every=5, checkpoint_every=5)
    return [RunSpec(protocol=protocol, dataset="synthetic", model="cnn9", regularizer=reg,
                    seed=seed, model_kwargs={"width": 0.125}, suite=suite)
            for seed in range(n_seeds) for reg in regularizers]


def log_counts(log: Path, kind: str = "start") -> dict[str, int]:
    """How many ``kind`` ("start" or "end") lines the fake engine logged, per run id."""
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            k, run_id, _ = line.split()
            if k == kind:
                counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def starts(log: Path) -> dict[str, int]:
    return log_counts(log, "start")


# --------------------------------------------------------------------------------------------
# subprocesses


def subprocess_env(*, fake_log: Path | None = None, fake_sleep: float | None = None,
                   **extra: str) -> dict[str, str]:
    """This environment for a child Python: the repository first on PYTHONPATH, one thread,
    no inherited plugins; the fake engine's log and sleep when given."""
    env = {k: v for k, v in os.environ.items() if k != "COMHE_PLUGINS"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if fake_log is not None:
        env["FAKE_TRAIN_LOG"] = str(fake_log)
    if fake_sleep is not None:
        env["FAKE_TRAIN_SLEEP"] = str(fake_sleep)
    env.update(extra)
    return env


def bench(*args: str, env: dict[str, str] | None = None, timeout: float | None = 900,
          check: bool = True) -> subprocess.CompletedProcess:
    """``python -m benchmark ARGS`` from the repository root, in ``env`` (default: this
    process's environment); with ``check`` a non-zero exit fails the test with the command,
    the end of its stdout and of its stderr."""
    proc = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, (f"python -m benchmark {' '.join(args)} exited "
                                      f"{proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_records(src: Path, dst: Path) -> None:
    """The run records of ``src`` (not its checkpoints, locks or store) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in record_files(src):
        shutil.copy(f, dst / f.name)


# --------------------------------------------------------------------------------------------
# the real-Slurm tests (tests/benchmark/test_slurm_cluster.py) and their switch

SLURM_SWITCH = "COMHE_SLURM_TESTS"
SLURM_SCRIPT = ROOT / "tools" / "slurm-local-cluster"
SLURM_DAEMONS = "munged, MariaDB, slurmdbd, slurmctld and slurmd"
# what the script needs on PATH before it installs anything (its install())
SLURM_COMMANDS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")


def slurm_packages() -> str:
    """The Debian packages tools/slurm-local-cluster installs (its PACKAGES line)."""
    m = re.search(r'^PACKAGES="([^"]*)"', SLURM_SCRIPT.read_text(), re.M)
    assert m, f"no PACKAGES line in {SLURM_SCRIPT}"
    return m.group(1)


def slurm_tests_on() -> bool:
    """On unless COMHE_SLURM_TESTS is 0 / off / no / false."""
    return os.environ.get(SLURM_SWITCH, "1").strip().lower() not in ("0", "off", "no", "false")


def slurm_header() -> str:
    """One line for the start of a test run: what the real-Slurm tests will install and start
    here, or why they will not, and how to switch them."""
    if not slurm_tests_on():
        return (f"slurm tests: off ({SLURM_SWITCH}={os.environ[SLURM_SWITCH]}): nothing installed "
                f"or started; unset {SLURM_SWITCH} to run them (as root)")
    if os.geteuid() != 0:
        return (f"slurm tests: skipped (not root: nothing installed or started); as root they "
                f"apt-get install {slurm_packages()} if missing and start {SLURM_DAEMONS}; "
                f"{SLURM_SWITCH}=0 turns them off")
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    install = (f"apt-get install {slurm_packages()} (Debian packages; missing: {' '.join(missing)})"
               if missing else "install nothing (Slurm and MariaDB found)")
    return (f"slurm tests (tests/benchmark/test_slurm_cluster.py, marked slurm, slow) will "
            f"{install} and start {SLURM_DAEMONS} (state under /tmp/comhe-slurm-*, stopped "
            f"after); {SLURM_SWITCH}=0 turns them off")


def run_slurm_script(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``tools/slurm-local-cluster COMMAND``: ``up`` installs missing packages and starts daemons."""
    return subprocess.run([str(SLURM_SCRIPT), command], env=env, capture_output=True, text=True,
                          timeout=timeout)


def local_slurm_up(state: Path) -> dict[str, str]:
    """Start the one-node Slurm with its state under ``state`` and return the script's
    environment; skips the calling test when the switch is off (before anything is run, so
    nothing is installed) or when the script cannot run here (exit 77: not root, no apt-get)."""
    if not slurm_tests_on():
        pytest.skip(f"{SLURM_SWITCH}={os.environ[SLURM_SWITCH]}: the real-Slurm tests are off "
                    f"(nothing installed or started)")
    env = dict(os.environ, COMHE_SLURM_STATE=str(state))
    up = run_slurm_script("up", env, timeout=600)
    if up.returncode == 77:
        pytest.skip(f"no local Slurm here: {up.stderr.strip()}")
    assert up.returncode == 0, up.stderr
    return env


IMAGE_FOLDER_CLASSES = ("n01", "n02", "n03")


def make_image_folder(root, n_train=8, n_val=3, seed=0):
    """root/imagenet/{train,val}/<class>/*.JPEG, images of assorted sizes (a tiny ImageNet)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(IMAGE_FOLDER_CLASSES):
            folder = root / "imagenet" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(36, 64)), int(rng.integers(36, 64))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c] = 255 - 10 * i  # a class colour, so there is something to learn
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", quality=90)
    return root
