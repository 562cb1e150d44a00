"""MHE / half-space MHE against the released code (github.com/wy1iu/MHE, code/architecture.py),
transcribed in float64 numpy, and the named strength settings ("code", "logs")."""

import math

import numpy as np
import pytest
import torch

import regularizers
from regularizers.mhe import default_strengths

from .conftest import TinyNet

POWERS = ["0", "1", "2", "a0", "a1", "a2"]


def _energy_sum(filt, power):
    """The common body of ``_add_thomson_constraint`` / ``_add_thomson_constraint_final``:
    filt (d, n) with neurons as COLUMNS (TF layout), returns reduce_sum(final) / cnt."""
    n_filt = filt.shape[1]
    filt_norm = np.sqrt(np.sum(filt * filt, axis=0, keepdims=True) + 1e-4)
    norm_mat = filt_norm.T @ filt_norm
    inner_pro = (filt.T @ filt) / norm_mat
    eye = np.diag([1.0] * n_filt)
    if power == "0":
        final = -np.log(2.0 - 2.0 * inner_pro + eye)
    elif power == "1":
        final = np.power(2.0 - 2.0 * inner_pro + eye, -0.5)
    elif power == "2":
        final = np.power(2.0 - 2.0 * inner_pro + eye, -1.0)
    else:
        acos = np.arccos(inner_pro) / math.pi + 1e-4
        final = -np.log(acos) if power == "a0" else np.power(acos, -1.0 if power == "a1" else -2.0)
    final = final - np.tril(final)  # final -= tf.matrix_band_part(final, -1, 0)
    cnt = n_filt * (n_filt - 1) / 2.0
    return np.sum(final) / cnt


def released_thomson_constraint(filt, model, power):
    """``_add_thomson_constraint(filt, n_filt, model, power)``: first and hidden layers."""
    if model == "half_mhe":
        filt = np.concatenate((filt, -filt), axis=1)
    weight = 1e-1 if power in ("a1", "a2") else 1.0
    return weight * _energy_sum(filt, power)


def released_thomson_constraint_final(filt, power):
    """``_add_thomson_constraint_final(filt, n_filt, power)``: the score layer, always full."""
    weight = 1.0 if power in ("a1", "a2") else 10.0
    return weight * _energy_sum(filt, power)


def released_mhe_loss(net, model, power):
    """thom + thomf of the released graph for this network (roles as the models tag them)."""
    thom = thomf = 0.0
    for name, p in net.named_parameters():
        filt = p.detach().reshape(p.shape[0], -1).numpy().T  # TF layout: neurons as columns
        if net.weight_roles[name] == "output":
            thomf += released_thomson_constraint_final(filt, power)
        else:
            thom += released_thomson_constraint(filt, model, power)
    return thom, thomf


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("name, model", [("mhe", "mhe"), ("hs_mhe", "half_mhe")])
def test_code_strengths_equal_the_released_graph(name, model, power):
    net = TinyNet()
    thom, thomf = released_mhe_loss(net, model, power)
    got = regularizers.create(name, power=power).attach(net).penalty().item()
    assert got == pytest.approx(thom + thomf, rel=1e-12)


@pytest.mark.parametrize("power", POWERS)
def test_logs_setting_reproduces_the_published_logs_strengths(power):
    """Full space: the published logs ran at 1/10 of the code's strengths (hidden AND output);
    half space: the logs match the code."""
    net = TinyNet()
    thom, thomf = released_mhe_loss(net, "mhe", power)
    got = regularizers.create("mhe", power=power, strengths="logs").attach(net).penalty().item()
    assert got == pytest.approx((thom + thomf) / 10, rel=1e-12)
    thom_h, thomf_h = released_mhe_loss(net, "half_mhe", power)
    got_h = regularizers.create("hs_mhe", power=power, strengths="logs").attach(net).penalty().item()
    assert got_h == pytest.approx(thom_h + thomf_h, rel=1e-12)


def test_named_settings_resolve_to_the_documented_numbers():
    want = {("code", False): {0: (1.0, 10.0), "a1": (0.1, 1.0)},
            ("code", True): {0: (1.0, 10.0), "a1": (0.1, 1.0)},
            ("logs", False): {0: (0.1, 1.0), "a1": (0.01, 0.1)},
            ("logs", True): {0: (1.0, 10.0), "a1": (0.1, 1.0)}}
    for (setting, half), by_power in want.items():
        for power, (h, o) in by_power.items():
            hp = regularizers.create("mhe", power=power, strengths=setting, half_space=half).hparams
            assert (hp["strength"], hp["output_strength"]) == pytest.approx((h, o), rel=1e-15)
            assert default_strengths(power, setting, half) == pytest.approx((h, o), rel=1e-15)
    for power in (1, 2, "a0"):
        assert default_strengths(power, "logs") == pytest.approx((0.1, 1.0))
    assert default_strengths("a2", "logs") == pytest.approx((0.01, 0.1))
    # explicit strengths win over the named setting
    hp = regularizers.create("mhe", strengths="logs", strength=0.5).hparams
    assert hp["strength"] == 0.5 and hp["output_strength"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="strengths.*must be one of 'code', 'logs'"):
        regularizers.create("mhe", strengths="paper")


def test_default_power_is_this_projects_choice_not_the_codes():
    """The MHE code defaults to --power_s 0 (full space); ours is s = 2 (documented)."""
    assert regularizers.create("mhe").hparams["power"] == 2
    assert regularizers.create("mhe", power=0).hparams == {
        "power": 0, "half_space": False, "strengths": "code", "strength": 1.0, "output_strength": 10.0}


def test_released_transcription_is_our_kernel_on_random_layers():
    """Guard on the transcription itself: the released per-layer loss equals the kernel's mean
    energy for a layer alone (full and half space, every power)."""
    W = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for power in POWERS:
        for half in (False, True):
            want = released_thomson_constraint(W.numpy().T, "half_mhe" if half else "mhe", power)
            weight = 0.1 if power in ("a1", "a2") else 1.0
            got = weight * regularizers.hyperspherical_energy(W, power, half).item()
            assert got == pytest.approx(want, rel=1e-12), (power, half)
