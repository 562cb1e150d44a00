"""The switch of the real-Slurm tests (COMHE_SLURM_TESTS): off, nothing is run (so nothing is
installed or started) and the tests skip naming the variable; on, tools/slurm-local-cluster is
asked to start the cluster. The script itself is replaced by a recorder here."""

from __future__ import annotations

import subprocess

import pytest

from tests import helpers


@pytest.fixture
def script_calls(monkeypatch):
    calls = []

    def fake_script(command, env, timeout):
        calls.append(command)
        return subprocess.CompletedProcess([command], 77, "", "needs root")

    monkeypatch.setattr(helpers, "run_slurm_script", fake_script)
    return calls


@pytest.mark.parametrize("value", ["0", "off", "no", "False"])
def test_off_runs_nothing_and_skips_naming_the_variable(monkeypatch, tmp_path, script_calls, value):
    monkeypatch.setenv("COMHE_SLURM_TESTS", value)
    with pytest.raises(pytest.skip.Exception, match=f"COMHE_SLURM_TESTS={value}: .* off"):
        helpers.local_slurm_up(tmp_path)
    assert script_calls == []
    assert helpers.slurm_header().startswith(f"slurm tests: off (COMHE_SLURM_TESTS={value})")


@pytest.mark.parametrize("value", [None, "1"])
def test_on_asks_the_script_to_start_the_cluster(monkeypatch, tmp_path, script_calls, value):
    if value is None:
        monkeypatch.delenv("COMHE_SLURM_TESTS", raising=False)  # the default: on, as CI runs them
    else:
        monkeypatch.setenv("COMHE_SLURM_TESTS", value)
    with pytest.raises(pytest.skip.Exception, match="no local Slurm here: needs root"):
        helpers.local_slurm_up(tmp_path)
    assert script_calls == ["up"]


def test_header_names_the_packages_the_daemons_and_the_switch(monkeypatch):
    monkeypatch.delenv("COMHE_SLURM_TESTS", raising=False)
    packages = helpers.slurm_packages()
    assert packages.split() == ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd",
                                "mariadb-server"]
    monkeypatch.setattr(helpers.shutil, "which", lambda cmd: None)  # nothing installed yet
    for root in (True, False):
        monkeypatch.setattr(helpers.os, "geteuid", lambda root=root: 0 if root else 1000)
        line = helpers.slurm_header()
        assert f"apt-get install {packages}" in line, line
        assert "munged, MariaDB, slurmdbd, slurmctld and slurmd" in line
        assert "COMHE_SLURM_TESTS=0 turns them off" in line
        assert ("not root" in line) is not root


def test_a_quiet_run_still_prints_the_line_first():
    """`make test` passes -q, which hides pytest's header (pytest_report_header): the session
    start prints the line itself then, and only then (no second copy under the header)."""
    from tests import conftest

    class Reporter:
        def __init__(self, showheader):
            self.showheader, self.lines = showheader, []

        def write_line(self, line):
            self.lines.append(line)

    class Session:
        def __init__(self, reporter):
            self.config = type("Config", (), {"pluginmanager": type(
                "PM", (), {"get_plugin": staticmethod(lambda name: reporter)})()})()

    quiet, normal = Reporter(showheader=False), Reporter(showheader=True)
    conftest.pytest_sessionstart(Session(quiet))
    conftest.pytest_sessionstart(Session(normal))
    assert quiet.lines == [helpers.slurm_header()] and normal.lines == []
    assert conftest.pytest_report_header(None) == [helpers.slurm_header()]


def test_readme_names_what_is_installed_and_the_switch():
    readme = (helpers.ROOT / "README.md").read_text()
    section = readme[readme.index("**What `make test` installs.**"):]
    section = " ".join(section[:section.index("\n\n")].split())
    assert f"`{helpers.slurm_packages()}`" in section and "apt-get" in section
    assert helpers.SLURM_DAEMONS in section and "COMHE_SLURM_TESTS=0 make test" in section
