import pytest

from benchmark.config import (
    ConfigError,
    RunSpec,
    available_protocols,
    load_protocol,
    parse_set,
    split_overrides,
)


def test_paper_protocols_spell_out_the_recipe():
    p = load_protocol("paper_cifar")
    assert (p.iterations, p.batch_size) == (75000, 128)
    assert p.schedule.milestones == (30000, 50000, 65000)
    assert (p.optimizer.lr, p.optimizer.momentum, p.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    assert p.optimizer.nesterov is False
    assert p.label_smoothing == 0.01 and p.eval_every == 500
    assert p.data.augmentation.pad_mode == "symmetric" and p.data.input_scaling == "tf"
    m = load_protocol("mhe_cifar")
    assert m.iterations == 42500 and m.schedule.milestones == (20000, 30000, 37500)


def test_schedule_matches_recipe():
    p = load_protocol("paper_cifar")
    assert p.lr_at(0) == pytest.approx(0.1)
    assert p.lr_at(29999) == pytest.approx(0.1)
    assert p.lr_at(30000) == pytest.approx(0.01)
    assert p.lr_at(49999) == pytest.approx(0.01)
    assert p.lr_at(50000) == pytest.approx(0.001)
    assert p.lr_at(65000) == pytest.approx(0.0001)
    assert p.lr_at(74999) == pytest.approx(0.0001)


@pytest.mark.parametrize("name", available_protocols())
def test_every_shipped_protocol_loads(name):
    assert load_protocol(name).name == name


@pytest.mark.parametrize("overrides, message", [
    ({"iterationz": 5}, "unknown field 'iterationz'; did you mean 'iterations'"),
    ({"iterations": "many"}, "field 'iterations' must be an integer"),
    ({"iterations": 0}, "'iterations' must be >= 1"),
    ({"optimizer.lr": -1.0}, "'optimizer.lr' must be > 0"),
    ({"data.augmentation.pad_mode": "wrap"}, "allowed: symmetric, reflect, zeros"),
    ({"schedule.milestones": [50, 10]}, "schedule.milestones"),
    ({"schedule.milestones": [80000]}, "schedule.milestones"),
    ({"data.augmentation.flip": "yes"}, "must be true or false"),
])
def test_bad_settings_fail_with_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_protocol("paper_cifar", overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_protocol_names_close_matches():
    with pytest.raises(ConfigError, match="did you mean 'paper_cifar'"):
        load_protocol("paper_cifra")


def test_set_parsing_and_split():
    sets = parse_set(["iterations=200", "optimizer.lr=5e-2", "model.width=0.25", "reg.proj_dim=30"])
    proto, model_kw, reg_kw = split_overrides(sets)
    assert proto == {"iterations": 200, "optimizer.lr": 0.05}
    assert model_kw == {"width": 0.25} and reg_kw == {"proj_dim": 30}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["iterations"])


def test_run_id_is_stable_and_ignores_label_and_suite():
    p = load_protocol("smoke")
    a = RunSpec(p, "digits", "cnn9", "rp_comhe", 0, {"width": 0.25}, {"proj_dim": 30}, label="RP")
    b = RunSpec(p, "digits", "cnn9", "rp_comhe", 0, {"width": 0.25}, {"proj_dim": 30}, suite="x")
    c = RunSpec(p, "digits", "cnn9", "rp_comhe", 1, {"width": 0.25}, {"proj_dim": 30})
    assert a.run_id == b.run_id and len(a.run_id) == 16
    assert a.run_id != c.run_id
    d = RunSpec(load_protocol("smoke", {"iterations": 13}), "digits", "cnn9", "rp_comhe", 0,
                {"width": 0.25}, {"proj_dim": 30})
    assert d.run_id != a.run_id


def test_paper_protocols_run_fp32_with_tf32_unless_told_otherwise():
    """paper_cifar / mhe_cifar: fp32 (the authors trained in fp32) with TF32 tensor cores on
    CUDA; runtime_settings sets the process-wide switches for every run and the record reads
    them back (tf32_state). Checked with a CUDA device object: no GPU needed to set the flags."""
    import torch
    from benchmark.training.run import runtime_settings, tf32_state

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for name in ("paper_cifar", "mhe_cifar"):
            p = load_protocol(name)
            assert p.runtime.precision == "tf32"
            bf16, _, _, dtype = runtime_settings(p, cuda)
            assert bf16 is False and dtype == torch.float32
            assert tf32_state(cuda) == {"tf32_matmul": True, "tf32_cudnn": True}
            assert tf32_state(cpu) == {"tf32_matmul": False, "tf32_cudnn": False}
            assert runtime_settings(p, cpu)[0] is False
        strict = load_protocol("paper_cifar", {"runtime.precision": "fp32"})
        runtime_settings(strict, cuda)
        assert tf32_state(cuda) == {"tf32_matmul": False, "tf32_cudnn": False}
        bf = load_protocol("paper_cifar", {"runtime.precision": "bf16"})
        assert runtime_settings(bf, cuda)[0] is True
        assert tf32_state(cuda) == {"tf32_matmul": False, "tf32_cudnn": True}  # PyTorch's defaults
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
