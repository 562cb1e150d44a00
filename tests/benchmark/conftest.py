"""Fixtures shared by the runner tests (test_runner, test_reliability, ...)."""

import pytest


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """The fake engine's environment (tests/helpers.fake_train): it logs every
    start and finish to the returned file and sleeps a little per run."""
    log = tmp_path / "train.log"
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.02")
    return log
