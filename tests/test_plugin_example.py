"""The example plugin (examples/spectral_plugin) end to end: the documented path of
CONTRIBUTING.md, "Add your regularizer to the leaderboard".

* the penalty against a float64 reference, in process (``regularizers.load_plugin``);
* ``--plugin FILE``: a suite with the plugin next to the baseline, ``run`` then ``report
  --leaderboard``, in subprocesses exactly as a user types them;
* the entry point: the plugin directory pip-installed into a temporary ``--target`` (the shared
  virtual environment is never modified) and found by ``regularizers.available()`` and
  ``python -m benchmark list`` with no ``--plugin``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import regularizers
from regularizers import registry
from tests.helpers import ROOT, bench

PLUGIN_DIR = ROOT / "examples" / "spectral_plugin"
PLUGIN_FILE = PLUGIN_DIR / "comhe_example_plugin.py"
NAME = "cosine_spread"
# the smoke protocol cut to 4 iterations: the pipeline is proven, the numbers mean nothing
TINY = ["--set", "iterations=4", "--set", "schedule.milestones=[2]", "--set", "eval_every=2",
        "--set", "checkpoint_every=2"]
TINY_SUITE = """\
description: test suite, the example plugin next to the baseline (seconds on a CPU)
protocol: smoke
datasets: [synthetic]
models:
  - {name: cnn9, kwargs: {width: 0.125}}
regularizers:
  - {name: weight_decay, label: Baseline}
  - {name: cosine_spread}
seeds: 2
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COMHE_PLUGINS"}  # no inherited plugins
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INDEX="1", **extra)
    return env


def _bench(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    return bench(*args, env=env or _env(), timeout=timeout).stdout


@pytest.fixture
def plugin_module():
    """The example loaded by file, as --plugin does; unregistered again afterwards."""
    before = registry._REGISTRY.get(NAME)
    module = regularizers.load_plugin(str(PLUGIN_FILE))
    yield module
    if before is None:
        registry._REGISTRY.pop(NAME, None)
    else:
        registry._REGISTRY[NAME] = before


def _reference(W: torch.Tensor) -> float:
    """Mean squared off-diagonal cosine, pair by pair in float64."""
    W = W.detach().double().reshape(W.shape[0], -1)
    n = W.shape[0]
    if n < 2:
        return 0.0
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                cos = (W[i] @ W[j]) / (W[i].norm() * W[j].norm())
                total += float(cos) ** 2
    return total / (n * (n - 1))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, bias=False)
        self.conv2 = nn.Conv2d(6, 6, 3, bias=False)   # same shape as conv3: one stacked call
        self.conv3 = nn.Conv2d(6, 6, 3, bias=False)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.fc(x.mean((-2, -1)))


def test_penalty_matches_float64_reference(plugin_module):
    assert NAME in regularizers.available()
    assert regularizers.registry.get(NAME) is plugin_module.CosineSpread
    torch.manual_seed(0)
    net = TinyNet()
    reg = regularizers.create(NAME, strength=0.5).attach(net, example_input=torch.zeros(1, 3, 8, 8))
    assert reg.layer_roles == {"conv1.weight": "first", "conv2.weight": "hidden",
                               "conv3.weight": "hidden", "fc.weight": "output"}
    got = reg.penalty()
    want = 0.5 * sum(_reference(m.weight) for m in (net.conv1, net.conv2, net.conv3))  # not fc
    assert got.ndim == 0 and got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert net.conv2.weight.grad is not None and net.fc.weight.grad is None

    # orthonormal neurons cost nothing, parallel ones cost 1 per layer; one neuron costs 0
    lin = nn.Sequential(nn.Linear(5, 3, bias=False), nn.Linear(3, 1, bias=False), nn.Linear(1, 2))
    with torch.no_grad():
        lin[0].weight.copy_(torch.eye(3, 5))
    reg = regularizers.create(NAME).attach(lin, roles={"2.weight": "output"})
    assert reg.penalty().item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[1.0, 2, 0, 0, 0]]).repeat(3, 1) * torch.tensor([[1.0], [-2], [3]]))
    assert reg.penalty().item() == pytest.approx(1.0, rel=1e-6)

    with pytest.raises(ValueError, match="strength"):
        regularizers.create(NAME, strength=-1.0)


def test_shipped_leaderboard_suite_is_valid(plugin_module):
    from benchmark.suites import load_suite

    suite = load_suite(PLUGIN_DIR / "leaderboard_suite.yaml", profile="smoke")  # validates every run
    assert [r.name for r in suite.regularizers] == ["weight_decay", NAME]


@pytest.mark.slow
def test_plugin_file_to_leaderboard_row(tmp_path):
    suite = tmp_path / "with_plugin.yaml"
    suite.write_text(TINY_SUITE)
    runs, lb = tmp_path / "runs", tmp_path / "leaderboard.md"
    plugin = ["--plugin", str(PLUGIN_FILE.relative_to(ROOT))]
    out = _bench(*plugin, "run", "--suite", str(suite), *TINY, "--results", str(runs), "--no-progress")
    assert "4 runs: 4 done, 0 failed" in out
    _bench(*plugin, "report", "--results", str(runs), "--out", str(tmp_path / "report"),
           "--leaderboard", str(lb))
    rows = [line for line in lb.read_text().splitlines() if line.startswith("|")]
    name = NAME.replace("_", "\\_")  # labels are Markdown-escaped
    mine = [r for r in rows if r.startswith(f"| {name} |")]
    base = [r for r in rows if r.startswith("| Baseline |")]
    assert len(mine) == 1 and len(base) == 1, lb.read_text()
    assert "| 2 complete |" in mine[0] and "(pairs=2)" in mine[0]  # 2 seeds, paired with the baseline
    assert "| baseline |" in base[0]


def test_regularizer_flag_adds_plugin_next_to_baseline(tmp_path):
    out = _bench("--plugin", str(PLUGIN_FILE), "status", "--suite", "smoke", "--regularizer", NAME,
                 "--results", str(tmp_path / "runs"))
    assert "4 runs" in out  # (Baseline, cosine_spread) x 2 seeds; nothing is run by `status`


@pytest.mark.slow
def test_entry_point_install_needs_no_plugin_flag(tmp_path):
    src, site = tmp_path / "src", tmp_path / "site"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(PLUGIN_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(src)],
                         env=_env(), capture_output=True, text=True, timeout=180)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert any(site.glob("comhe_bench_example_plugin-*.dist-info/entry_points.txt"))

    env = _env(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    check = textwrap.dedent(f"""
        import regularizers
        assert {NAME!r} in regularizers.available(), regularizers.available()
        reg = regularizers.create({NAME!r}, strength=2.0)
        print(type(reg).__module__, reg.hparams)
        from benchmark.cli import main
        raise SystemExit(main(["list", "regularizers"]))
    """)
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("comhe_example_plugin {'strength': 2.0}")
    assert f"  {NAME}\n" in proc.stdout
    assert "failed to load" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_plugin_reaches_worker_processes(tmp_path):
    """With --jobs 2 every run trains in its own worker process: each must load the plugin
    (through COMHE_PLUGINS) or the plugin's runs would fail as 'unknown regularizer'."""
    suite = tmp_path / "with_plugin.yaml"
    suite.write_text(TINY_SUITE.replace("seeds: 2", "seeds: 1"))
    runs = tmp_path / "runs"
    out = _bench("--plugin", str(PLUGIN_FILE), "run", "--suite", str(suite), *TINY, "--results",
                 str(runs), "--jobs", "2", "--no-progress")
    assert "2 runs: 2 done, 0 failed" in out, out
    logs = sorted((runs / "logs").glob("*.log"))
    assert len(logs) == 2  # two worker processes ran, one run each
    records = [json.loads(p.read_text()) for p in runs.rglob("*.json") if p.parent.name != "logs"]
    mine = [r for r in records if r.get("config", {}).get("regularizer") == NAME]
    assert len(mine) == 1 and mine[0]["status"] == "complete"
