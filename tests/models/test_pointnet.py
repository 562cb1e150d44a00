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


def test_roles_shared_mlps_and_fcs_regularized_tnets_left_alone():
    # this project's choice (models/pointnet.py docstring): the shared MLPs and classifier FCs
    model = models.create("pointnet", num_classes=40)
    roles = model.weight_roles
    params = dict(model.named_parameters())
    assert list(roles) == weight_names(model)
    tnet = {n for n in roles if n.startswith(("input_tnet.", "feature_tnet."))}
    assert len(tnet) == 12 and {roles[n] for n in tnet} == {"transform"}
    assert {n for n, r in roles.items() if r == "first"} == {"mlp1.0.weight"}
    assert params["mlp1.0.weight"].shape[1] == 3
    assert [n for n, r in roles.items() if r == "output"] == ["fc3.weight"]
    assert {n for n, r in roles.items() if r == "hidden"} == {
        "mlp1.3.weight", "mlp2.0.weight", "mlp2.3.weight", "mlp2.6.weight", "fc1.0.weight", "fc2.0.weight"}
    assert params["fc3.weight"].shape == (40, 256)
    # every conv is a (N, d, 1) Conv1d weight
    assert params["mlp2.6.weight"].shape == (1024, 128, 1)
    vanilla = models.create("pointnet_vanilla", num_classes=10).weight_roles
    assert sorted(vanilla.values()).count("first") == 1 and "fc3.weight" in vanilla
    assert "transform" not in vanilla.values()


def test_regularize_tnets_restores_the_earlier_roles():
    model = models.create("pointnet", num_classes=40, regularize_tnets=True)
    roles = model.weight_roles
    params = dict(model.named_parameters())
    assert set(roles.values()) == {"first", "hidden", "output"}
    assert {n for n, r in roles.items() if r == "first"} == {"mlp1.0.weight", "input_tnet.mlp.0.weight"}
    assert all(params[n].shape[1] == 3 for n, r in roles.items() if r == "first")
    assert roles["feature_tnet.transform.weight"] == "hidden"
    with pytest.raises(ValueError, match="regularize_tnets"):
        models.create("pointnet", num_classes=40, regularize_tnets="yes")


@pytest.mark.parametrize("name", ["mhe", "rp_comhe", "ap_comhe", "srip", "so", "g_comhe"])
def test_every_regularizer_acts_on_the_shared_mlps_and_fcs_only(name):
    import regularizers

    torch.manual_seed(0)
    model = models.create("pointnet", num_classes=5, width=0.25)
    reg = regularizers.create(name).attach(model)
    seen = [n for n, _, _ in reg.layers]
    assert seen == [n for n, r in model.weight_roles.items() if r != "transform"]
    assert len(seen) == 8 and not any("tnet" in n for n in seen)
    # no gradient of the penalty reaches a T-Net weight
    reg.before_step(0.1)
    reg.penalty().backward()
    tnets = [p for n, p in model.named_parameters() if "tnet" in n]
    assert tnets and all(p.grad is None for p in tnets)
    # the earlier rule, on request: all 20 weights
    wide = models.create("pointnet", num_classes=5, width=0.25, regularize_tnets=True)
    assert len(regularizers.create(name).attach(wide).layers) == 20
    # the engine passes the model's roles back as the caller's roles: same selection
    again = regularizers.create(name).attach(model, roles=dict(model.weight_roles))
    assert [n for n, _, _ in again.layers] == seen


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
