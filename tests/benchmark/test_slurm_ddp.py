"""Multi-node Slurm submission (no cluster): the job parameters submitit receives, and what each
task of a run's job does."""

from __future__ import annotations

import pytest
from submitit.helpers import DelayedSubmission

from benchmark import cli
from benchmark.config import ConfigError
from benchmark.sweep import dispatch, slurm
from benchmark.sweep.slurm import RunTask, SlurmOptions, submit_slurm
from tests.helpers import tiny_spec


def spec(seed=0, **over):
    return tiny_spec("weight_decay", seed, **over)


class FakeJob:
    def __init__(self, i):
        self.job_id = f"4242_{i}"


class FakeExecutor:
    """submitit.AutoExecutor's surface that submit_slurm uses, recording what it was given."""

    made: list["FakeExecutor"] = []

    def __init__(self, folder, cluster, **kw):
        self.init = {"folder": folder, "cluster": cluster, **kw}
        self.params: dict = {}
        self.calls: list = []
        FakeExecutor.made.append(self)

    def update_parameters(self, **kw):
        self.params.update(kw)

    def map_array(self, fn, *iterables):
        self.calls.append((fn, [list(it) for it in iterables]))
        return [FakeJob(i) for i in range(len(iterables[0]))]


@pytest.fixture
def fake(monkeypatch):
    FakeExecutor.made = []
    monkeypatch.setattr(slurm.submitit, "AutoExecutor", FakeExecutor)
    return FakeExecutor.made


def test_gpus_and_nodes_give_one_multi_task_job_per_run(fake, tmp_path):
    opts = SlurmOptions(gpus_per_node=8, nodes=2, cpus_per_task=10, partition="gpu")
    jobs = submit_slurm([spec(0), spec(1)], tmp_path, options=opts)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1"]
    (ex,) = fake
    p = ex.params
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"], p["cpus_per_task"]) == (2, 8, 8, 10)
    assert p["slurm_partition"] == "gpu" and ex.init["slurm_max_num_timeout"] == 3
    (fn, (runs, seen)), = ex.calls
    assert isinstance(fn, RunTask) and fn.distributed and len(runs) == 2 == len(seen)
    assert opts.world_size == 16
    # a requeue re-submits the same task object with the same run
    again = fn.checkpoint(runs[0], seen[0])
    assert isinstance(again, DelayedSubmission) and again.function is fn
    assert again.args == (runs[0], seen[0])


def test_one_gpu_one_node_keeps_one_task_per_run(fake, tmp_path):
    submit_slurm([spec()], tmp_path, options=SlurmOptions(gpus_per_node=1))
    p = fake[0].params
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"]) == (1, 1, 1)
    assert not fake[0].calls[0][0].distributed


def test_cpu_nodes_get_one_task_each(fake, tmp_path):
    opts = SlurmOptions(gpus_per_node=0, nodes=4)
    submit_slurm([spec()], tmp_path, options=opts)
    assert (fake[0].params["nodes"], fake[0].params["tasks_per_node"]) == (4, 1)
    assert opts.distributed and opts.world_size == 4


def test_a_batch_the_world_does_not_divide_is_refused_before_submitting(fake, tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size 32 .* world size 24"):
        submit_slurm([spec()], tmp_path / "r", options=SlurmOptions(gpus_per_node=8, nodes=3))
    assert not fake and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="--nodes must be >= 1"):
        submit_slurm([spec()], tmp_path / "r", options=SlurmOptions(nodes=0))


def test_a_task_exports_the_distributed_environment_and_trains_with_the_others(monkeypatch, tmp_path):
    seen = {}

    class FakeEnv:
        def export(self, overwrite=False):
            seen["exported"] = overwrite
            return self

    def fake_run_distributed(specs, results_dir, *, retry_failed, progress):
        seen["runs"] = [s.run_id for s in specs]
        seen["retry"] = retry_failed
        return type("Summary", (), {"executed": {specs[0].run_id: "complete"}})()

    monkeypatch.setattr(slurm, "TorchDistributedEnvironment", FakeEnv)
    monkeypatch.setattr(slurm, "run_distributed", fake_run_distributed)
    s = spec()
    out = RunTask(tmp_path, retry_failed=True, distributed=True)(s)
    assert seen == {"exported": True, "runs": [s.run_id], "retry": True}
    assert out["run_id"] == s.run_id and out["ran_here"] is True


def test_cli_passes_nodes_and_gpus_to_the_slurm_options(monkeypatch, tmp_path):
    got = {}

    def fake_execute(specs, results, **kw):
        got.update(kw)
        raise ConfigError("stop here")

    monkeypatch.setattr(dispatch, "execute", fake_execute)
    code = cli.main(["run", "--protocol", "smoke", "--dataset", "digits", "--model", "cnn9",
                     "--regularizer", "weight_decay", "--results", str(tmp_path), "--executor",
                     "slurm", "--nodes", "2", "--gpus-per-node", "4"])
    assert code == 2 and got["executor"] == "slurm"
    opts = got["slurm"]
    assert (opts.nodes, opts.gpus_per_node, opts.world_size, opts.distributed) == (2, 4, 8, True)
