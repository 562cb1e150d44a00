import textwrap

import pytest
import torch
from torch import nn

import regularizers
from regularizers import registry
from regularizers.roles import resolve_roles

EXPECTED = {"weight_decay", "so", "dso", "mc", "srip", "mhe", "hs_mhe",
            "rp_comhe", "ap_comhe", "adv_comhe", "g_comhe"}


def test_all_names_registered():
    assert EXPECTED <= set(regularizers.available())
    assert regularizers.available("*comhe") == ["adv_comhe", "ap_comhe", "g_comhe", "rp_comhe"]


def test_unknown_name_and_hparam_name_the_closest_choices():
    with pytest.raises(ValueError, match="did you mean 'rp_comhe'") as info:
        regularizers.create("rp_comhee")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="did you mean 'proj_dim'"):
        regularizers.create("rp_comhe", proj_dimm=3)


@pytest.mark.parametrize("name, kw, match", [
    ("rp_comhe", {"proj_dim": 0}, "proj_dim' must be a finite int >= 1"),
    ("rp_comhe", {"num_projections": 0}, "num_projections"),
    ("rp_comhe", {"proj_dim": 2.5}, "must be an int"),
    ("mhe", {"power": 3}, "one of 0, 1, 2"),
    ("hs_mhe", {"strength": -1.0}, ">= 0"),
    ("hs_mhe", {"strength": float("nan")}, "finite"),
    ("ap_comhe", {"first_order": "yes"}, "True or False"),
    ("g_comhe", {"groups": 0}, "groups"),
    ("srip", {"power_iters": 0}, "power_iters"),
    ("srip", {"schedule": 1}, "'released', 'constant'"),
    ("mhe", {"strengths": "Logs"}, "did you mean 'logs'"),
    ("rp_comhe", {"pnd": -1}, "pnd"),
    ("rp_comhe", {"unprojected": "first_layer"}, "'first', 'n_input_3', 'fan_in'"),
])
def test_invalid_values_raise_clear_errors(name, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        regularizers.create(name, **kw)
    assert "\n" not in str(info.value)


def test_power_dependent_default_strengths():
    assert regularizers.create("mhe", power="a1").hparams == {
        "power": "a1", "half_space": False, "strengths": "code", "strength": 0.1,
        "output_strength": 1.0}
    assert regularizers.create("hs_mhe", power="2").hparams["power"] == 2
    hp = regularizers.create("hs_mhe", power=0, strength=0.5).hparams
    assert hp["strength"] == 0.5 and hp["output_strength"] == 10.0 and hp["half_space"] is True


def test_load_plugin_from_file_registers_a_regularizer(tmp_path):
    f = tmp_path / "my_plugin.py"
    f.write_text(textwrap.dedent("""
        import regularizers
        from regularizers.base import HParam

        @regularizers.register
        class Frob(regularizers.Regularizer):
            name = "test_frobenius_plugin"
            HPARAMS = {"strength": HParam(2.0, "float", 0.0)}

            def penalty(self):
                return self.hparams["strength"] * sum(p.square().sum() for _, p, _ in self.layers)
    """))
    try:
        regularizers.load_plugin(str(f))
        assert "test_frobenius_plugin" in regularizers.available()
        net = nn.Linear(3, 2, bias=False)
        got = regularizers.create("test_frobenius_plugin").attach(net).penalty()
        assert got.item() == pytest.approx(2.0 * net.weight.square().sum().item())
    finally:
        registry._REGISTRY.pop("test_frobenius_plugin", None)
    with pytest.raises(ValueError, match="not found"):
        regularizers.load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="neither a .py file nor an importable module"):
        regularizers.load_plugin("no_such_module_xyz")


def test_entry_point_plugins_load_lazily(monkeypatch):
    class FakeEP:
        name, value = "ep_reg", "fake:EpReg"

        def load(self):
            class EpReg(regularizers.Regularizer):
                name = "test_entry_point_reg"
            return EpReg

    seen = []
    monkeypatch.setattr(registry, "entry_points", lambda group: seen.append(group) or [FakeEP()])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        assert "test_entry_point_reg" in regularizers.available()
        assert seen == ["comhe_bench.regularizers"]
    finally:
        registry._REGISTRY.pop("test_entry_point_reg", None)


class SmallCNN(nn.Module):
    """The classifier is REGISTERED first but runs last: only forward order gets roles right."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8 * 2 * 2, 5)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def test_infer_roles_forward_order_and_registration_order():
    net = SmallCNN()
    before = net.bn1.running_mean.clone()
    roles = regularizers.infer_roles(net, example_input=torch.randn(2, 3, 4, 4))
    assert roles == {"fc.weight": "output", "conv1.weight": "first", "conv2.weight": "hidden"}
    assert torch.equal(net.bn1.running_mean, before) and net.training  # no side effects
    # without an example input: registration order (documented fallback)
    assert regularizers.infer_roles(net)["fc.weight"] == "first"
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    assert list(regularizers.infer_roles(seq).values()) == ["first", "hidden", "output"]


def test_weight_roles_attribute_and_roles_override():
    net = SmallCNN()
    net.weight_roles = {"conv1.weight": "first", "conv2.weight": "hidden", "fc.weight": "output"}
    got = {n: r for n, _, r in resolve_roles(net)}
    assert got == net.weight_roles
    got = {n: r for n, _, r in resolve_roles(net, roles={"conv2.weight": "output", "fc.weight": "none"})}
    assert got == {"conv1.weight": "first", "conv2.weight": "output"}
    reg = regularizers.create("hs_mhe").attach(net, roles={"fc.weight": "none"})
    assert reg.layer_names == ["conv1.weight", "conv2.weight"]
    with pytest.raises(ValueError, match="did you mean 'conv1.weight'"):
        resolve_roles(net, roles={"conv1.weigth": "first"})
    with pytest.raises(ValueError, match="allowed roles"):
        resolve_roles(net, roles={"conv1.weight": "input"})
    with pytest.raises(ValueError, match="ndim >= 2"):
        resolve_roles(net, roles={"bn1.weight": "hidden"})


def test_penalty_before_attach_is_a_clear_error():
    with pytest.raises(RuntimeError, match="attach"):
        regularizers.create("hs_mhe").penalty()
