"""Parameter counts against formulas written from the papers, independent of the modules."""

import pytest

import models


def _n_params(model, ndim=None):
    return sum(p.numel() for p in model.parameters() if ndim is None or ndim(p.ndim))


def _bn(c):
    return 2 * c  # gamma and beta


def _he_resnet_count(depth, classes, in_chans=3):
    """6n+2 layers; option-A shortcuts have no parameters (He et al. 2016, §4.2)."""
    n = (depth - 2) // 6
    total = 9 * in_chans * 16 + _bn(16)
    c_in = 16
    for w in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * w + _bn(w) + 9 * w * w + _bn(w)
            c_in = w
    return total + 64 * classes + classes


def _resnet18_count(classes, in_chans=3):
    total = 9 * in_chans * 64 + _bn(64)
    c_in = 64
    for w in (64, 128, 256, 512):
        for _ in range(2):
            total += 9 * c_in * w + _bn(w) + 9 * w * w + _bn(w)
            if c_in != w:
                total += c_in * w + _bn(w)  # 1x1 projection + BN
            c_in = w
    return total + 512 * classes + classes


def _wrn_count(depth, k, classes, in_chans=3):
    n = (depth - 4) // 6
    total = 9 * in_chans * 16
    c_in = 16
    for w in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += _bn(c_in) + 9 * c_in * w + _bn(w) + 9 * w * w
            if c_in != w:
                total += c_in * w  # 1x1 projection, no BN (pre-activation block)
            c_in = w
    return total + _bn(c_in) + c_in * classes + classes


def test_cnn9_counts_match_the_recipe():
    model = models.create("cnn9", num_classes=100)
    # 9 3x3 convs + fc6 (4x4, 256->256) + score (1x1, 256->100), no biases anywhere.
    convs = (9 * (3 * 64 + 64 * 64 * 2) + 9 * (64 * 128 + 128 * 128 * 2)
             + 9 * (128 * 256 + 256 * 256 * 2) + 16 * 256 * 256 + 256 * 100)  # = 2,992,832
    assert _n_params(model, lambda d: d >= 2) == convs
    assert _n_params(model, lambda d: d == 1) == 2_688 == 2 * (3 * 64 + 3 * 128 + 3 * 256)
    assert _n_params(model) == 2_992_832 + 2_688


def test_cnn9_width_and_in_chans():
    model = models.create("cnn9", num_classes=10, in_chans=1, width=0.25)
    widths = [m.out_channels for m in model.modules() if type(m).__name__ == "Conv2d"]
    assert widths == [16] * 3 + [32] * 3 + [64] * 3 + [64, 10]
    assert model.features.conv1_1.conv.in_channels == 1
    assert models.create("cnn9", num_classes=10, width=1e-3).fc6.out_channels == 1


@pytest.mark.parametrize("name, depth, published", [
    ("resnet20", 20, "0.27"), ("resnet32", 32, "0.46"), ("resnet56", 56, "0.85"),
    ("resnet110", 110, "1.7"),
])
def test_he_cifar_resnet_counts(name, depth, published):
    """Exact formula count, and the paper's Table 6 figure (millions, at 10 classes).

    The paper rounds to two significant digits, so the exact count must round to the printed
    figure; it must also lie within 1% of it, except where the rounding itself is coarser than
    1%: ResNet-110 has 1,727,962 parameters, printed as 1.7M (1.6% away, within the +-0.05M
    that "1.7" stands for).
    """
    model = models.create(name, num_classes=10)
    count = _n_params(model)
    assert count == _he_resnet_count(depth, 10)
    decimals = len(published.split(".")[1])
    assert round(count / 1e6, decimals) == float(published)
    half_step = 0.5 * 10 ** -decimals / float(published)
    assert abs(count / 1e6 - float(published)) / float(published) < max(0.01, half_step)
    assert _n_params(models.create(name, num_classes=100)) == _he_resnet_count(depth, 100)


def test_resnet18_cifar_count():
    count = _n_params(models.create("resnet18", num_classes=10))
    # the formula's count, and the published "11.17M" to its rounding
    assert count == _resnet18_count(10)
    assert round(count / 1e6, 2) == 11.17


def test_wrn28_10_count():
    count = _n_params(models.create("wrn28_10", num_classes=10))
    assert count == _wrn_count(28, 10, 10)
    assert abs(count - 36.5e6) / 36.5e6 < 0.01
