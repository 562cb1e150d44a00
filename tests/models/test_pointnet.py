"""PointNet: parameter counts against the reference code, roles, shapes, the transform loss."""

import pytest
import torch

import models
from models.pointnet import TRANSFORM_LOSS_WEIGHT, transform_loss
from regularizers.roles import weight_names

# Reference counts, by hand from github.com/charlesq34/pointnet (models/pointnet_cls.py,
# models/transform_nets.py; utils/tf_util.py gives every conv2d / fully_connected a bias, and
# with bn=True a BatchNorm with trainable beta and gamma: 2 x C). Trainable parameters:
#   input T-Net (K=3):  tconv1 [1,3,1,64]: 192 + 64 + 128 = 384
#                       tconv2 64->128: 8,192 + 128 + 256 = 8,576
#                       tconv3 128->1024: 131,072 + 1,024 + 2,048 = 134,144
#                       tfc1 1024->512: 524,288 + 512 + 1,024 = 525,824
#                       tfc2 512->256: 131,072 + 256 + 512 = 131,840
#                       transform_XYZ: weights 256 x 9 = 2,304 + biases 9 = 2,313
#                       total 803,081
#   feature T-Net (K=64): tconv1 64->64: 4,096 + 64 + 128 = 4,288; tconv2 8,576; tconv3 134,144;
#                       tfc1 525,824; tfc2 131,840; transform_feat 256 x 4,096 + 4,096 = 1,052,672
#                       total 1,857,344
#   classifier:         conv1 [1,3,1,64] 384; conv2 64->64 4,288; conv3 64->64 4,288;
#                       conv4 64->128 8,576; conv5 128->1024 134,144; fc1 525,824; fc2 131,840;
#                       fc3 256->40 (no BN): 10,240 + 40 = 10,280
#                       total 819,624
#   pointnet_cls = 819,624 + 803,081 + 1,857,344 = 3,480,049
REFERENCE_POINTNET = 3_480_049
REFERENCE_NO_TNETS = 819_624


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_reference_code():
    torch.manual_seed(0)
    assert _count(models.create("pointnet", num_classes=40)) == REFERENCE_POINTNET
    assert _count(models.create("pointnet_vanilla", num_classes=40)) == REFERENCE_NO_TNETS


def test_roles_first_is_fan_in_3_output_is_the_classifier():
    model = models.create("pointnet", num_classes=40)
    roles = model.weight_roles
    params = dict(model.named_parameters())
    assert list(roles) == weight_names(model)
    assert {n for n, r in roles.items() if r == "first"} == {"mlp1.0.weight", "input_tnet.mlp.0.weight"}
    assert all(params[n].shape[1] == 3 for n, r in roles.items() if r == "first")
    assert [n for n, r in roles.items() if r == "output"] == ["fc3.weight"]
    assert params["fc3.weight"].shape == (40, 256)
    # every conv is a (N, d, 1) Conv1d weight
    assert params["mlp2.6.weight"].shape == (1024, 128, 1)
    vanilla = models.create("pointnet_vanilla", num_classes=10).weight_roles
    assert sorted(vanilla.values()).count("first") == 1 and "fc3.weight" in vanilla


@pytest.mark.parametrize("name", ["pointnet", "pointnet_vanilla"])
def test_forward_backward_every_parameter_takes_part(name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=5, width=0.125).train()
    x = torch.randn(4, 32, 3)
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (4, 5)
    assert set(aux) == ({"transform"} if name == "pointnet" else set())
    (logits.logsumexp(1).sum() + sum(aux.values(), torch.zeros(()))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    assert torch.equal(model(x), model.forward_with_aux(x)[0])


def test_tnets_start_at_the_identity_and_the_model_is_permutation_invariant():
    torch.manual_seed(0)
    model = models.create("pointnet", num_classes=5, width=0.125).eval()
    x = torch.randn(3, 50, 3)
    a = model.input_tnet(x.transpose(1, 2))
    assert torch.equal(a, torch.eye(3).expand(3, 3, 3))
    _, aux = model.forward_with_aux(x)
    assert float(aux["transform"].detach()) == 0.0  # A = I at initialisation
    perm = torch.randperm(50)
    torch.testing.assert_close(model(x), model(x[:, perm]), rtol=1e-5, atol=1e-5)


def test_transform_loss_against_its_definition_in_float64():
    # tf.nn.l2_loss(A A^T - I) = sum over batch and entries of (A A^T - I)^2 / 2
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    want = 0.0
    for b in range(3):
        for i in range(4):
            for j in range(4):
                s = sum(a[b, i, k].item() * a[b, j, k].item() for k in range(4)) - (i == j)
                want += s * s / 2
    assert float(transform_loss(a)) == pytest.approx(want, rel=1e-12)
    assert torch.autograd.gradcheck(transform_loss, (a.clone().requires_grad_(),))
    assert TRANSFORM_LOSS_WEIGHT == 0.001


def test_bad_inputs_and_keywords_fail_in_one_line():
    model = models.create("pointnet", num_classes=5, width=0.125)
    with pytest.raises(ValueError, match=r"points of shape \(B, P, 3\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="width must be > 0"):
        models.create("pointnet", num_classes=5, width=0)
    with pytest.raises(ValueError, match="dropout"):
        models.create("pointnet_vanilla", num_classes=5, dropout=1.0)
