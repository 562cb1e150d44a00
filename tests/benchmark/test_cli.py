"""The command line: one-line errors before anything is written, and `list`."""

import pytest

from benchmark.cli import main

RUN = ["run", "--protocol", "smoke", "--model", "cnn9", "--set", "model.width=0.125", "--seed", "0",
       "--no-progress"]


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("regularizers:", "rp_comhe", "models:", "cnn9", "timm:<", "datasets:", "digits",
                 "protocols:", "paper_cifar", "suites:", "table2"):
        assert word in out


@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10", "--regularizer", "weight_decay"], "cifar10 not found under"),
    (["--dataset", "digits", "--regularizer", "rp_comhee"], "did you mean 'rp_comhe'"),
    (["--dataset", "digits", "--regularizer", "weight_decay", "--set", "iterations"], "--set expects key=value"),
    (["--dataset", "digits", "--regularizer", "weight_decay", "--set", "batch_size=-1"], "'batch_size' must be >= 1"),
    (["--dataset", "mnist", "--regularizer", "weight_decay"], "unknown dataset 'mnist'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "no-data"))
    results = tmp_path / "results"
    assert main([*RUN, *args, "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not results.exists()


def test_unknown_model_and_suite(tmp_path, capsys):
    assert main(["run", "--protocol", "smoke", "--dataset", "digits", "--model", "resnet21",
                 "--regularizer", "weight_decay", "--results", str(tmp_path / "r")]) == 2
    assert "resnet20" in capsys.readouterr().err
    assert main(["run", "--suite", "quik", "--results", str(tmp_path / "r")]) == 2
    assert "did you mean 'quick'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
