import os

import pytest
import torch

from tests.helpers import slurm_header

# Two cores on CI: at most two intra-op threads in a serial run; one per worker under
# pytest-xdist (`-n 2`, `make test-quick`), so that the workers do not fight over the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER")
                      else max(1, min(2, os.cpu_count() or 1)))


def pytest_report_header(config):
    # What the real-Slurm tests will install and start here (apt-get, daemons), or why not, and
    # the switch (COMHE_SLURM_TESTS=0): before anything runs, so nobody is surprised.
    return [slurm_header()]


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    # `-q` (what `make test` passes) hides the header above: the line is printed anyway.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not reporter.showheader:
        reporter.write_line(slurm_header())


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"
