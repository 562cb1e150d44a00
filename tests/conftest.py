import os

import pytest
import torch

# Two cores on CI: one intra-op thread per test process keeps timings and runs predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"
