"""The point-cloud setting end to end: ModelNet-40's HDF5 release (generated files in its exact
layout), synthetic shapes, the point stream and its augmentation, Adam and the PointNet
schedules, the model auxiliary-loss hook, mean class accuracy, and what the fast paths refuse."""

import json
import math

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import models
from benchmark.data import datasets
from benchmark.cli import main
from benchmark.config import ConfigError, RunSpec, load_protocol
from benchmark.data.datasets.modelnet40 import TEST_FILES, TRAIN_FILES, read_h5, write_release
from benchmark.data.datasets.synthetic_shapes import make_shapes
from benchmark.analysis.store import build_store
from benchmark.data.points import PointStream, augment_points, rotation_about_up
from benchmark.training import check_packable, setup, train, validate
from benchmark.training.loop import mean_class_accuracy
from models.builders import weight_roles_from

TINY = {"iterations": 4, "eval_every": 2, "checkpoint_every": 2, "data.points.num_points": 64,
        "schedule.every": 2, "bn_momentum_schedule.every": 2, "runtime.threads": 1}


@pytest.fixture
def release(tmp_path, monkeypatch):
    """A tiny ModelNet-40 in the release's layout: 5 train / 2 test files, (n, 2048, 3) float32
    ``data`` and (n, 1) uint8 ``label``, under $COMHE_DATA/modelnet40_ply_hdf5_2048."""
    x, y = make_shapes(10, 120, 2048, seed=0)
    xt, yt = make_shapes(10, 40, 2048, seed=1)
    y, yt = y * 4, yt * 4  # labels spread over 0..36 of the 40 classes
    write_release(tmp_path, (x, y), (xt, yt))
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    monkeypatch.delenv("COMHE_DOWNLOAD", raising=False)
    return tmp_path, (x, y), (xt, yt)


def test_release_layout_is_read_back_exactly(release):
    root, (x, y), (xt, yt) = release
    folder = root / "modelnet40_ply_hdf5_2048"
    with h5py.File(folder / "ply_data_train0.h5", "r") as f:
        assert f["data"].dtype == np.float32 and f["data"].shape == (24, 2048, 3)
        assert f["label"].dtype == np.uint8 and f["label"].shape == (24, 1)
    assert sorted(p.name for p in folder.glob("*.h5")) == sorted(TRAIN_FILES + TEST_FILES)
    ds = datasets.load("modelnet40", load_protocol("pointnet_modelnet40").data)
    assert ds.kind == "points" and ds.in_chans == 3 and ds.num_classes == 40
    assert torch.equal(ds.train_x, x) and torch.equal(ds.train_y, y)
    assert torch.equal(ds.test_x, xt) and torch.equal(ds.test_y, yt)
    assert ds.train_y.dtype == torch.int64
    gx, gy = read_h5([folder / n for n in TEST_FILES])
    assert torch.equal(gx, xt) and torch.equal(gy, yt)


def test_missing_files_fail_in_one_line_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    monkeypatch.delenv("COMHE_DOWNLOAD", raising=False)
    s = RunSpec(load_protocol("pointnet_modelnet40"), "modelnet40", "pointnet", "rp_comhe", 0)
    with pytest.raises(ConfigError) as exc:
        validate(s)
    msg = str(exc.value)
    assert "\n" not in msg and "ply_data_train0.h5" in msg and "ply_data_test1.h5" in msg
    assert "--download" in msg and str(tmp_path) in msg
    x, y = make_shapes(2, 10, 2048, seed=0)
    write_release(tmp_path, (x, y), (x, y))
    (tmp_path / "modelnet40_ply_hdf5_2048" / "ply_data_test1.h5").unlink()
    with pytest.raises(ConfigError, match=r"lacks ply_data_test1\.h5 \("):
        validate(s)


def test_the_done_when_command_runs_on_release_files(release, tmp_path, capsys):
    results = tmp_path / "results"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    rc = main(["run", "--protocol", "pointnet_modelnet40", "--dataset", "modelnet40", "--model",
               "pointnet", "--regularizer", "rp_comhe", "--seed", "0", "--results", str(results),
               "--no-progress", *sets, "--set", "model.width=0.125"])
    assert rc == 0, capsys.readouterr()
    (path,) = list(results.glob("*.json"))
    rec = json.loads(path.read_text())
    assert rec["status"] == "complete" and rec["final"]["n_test"] == 40
    assert 0 <= rec["final"]["test_mean_class_acc"] <= 100
    assert set(rec["curves"]["aux"]) == {"transform"} and len(rec["curves"]["aux"]["transform"]) == 2
    assert rec["final"]["aux"]["transform"] == rec["curves"]["aux"]["transform"][-1]
    assert rec["config"]["protocol"]["optimizer"]["name"] == "adam"
    assert len(rec["curves"]["energy"]) == len(models.create("pointnet", 40).weight_roles)


def test_synthetic_shapes_learn_on_the_cpu(results_dir):
    """Adam on 10 solids: well above chance (10%) after 60 steps of a small PointNet."""
    proto = load_protocol("pointnet_cpu", {"iterations": 60, "eval_every": 60})
    rec = train(RunSpec(proto, "synthetic_shapes", "pointnet", "mhe", 0, model_kwargs={"width": 0.125}),
                results_dir, progress=False)
    assert rec["synthetic"] is True and rec["final"]["test_acc"] > 40, rec["final"]


def test_point_stream_is_deterministic_resumable_and_augmented_as_defined():
    ds = datasets.load("synthetic_shapes:3", load_protocol("pointnet_cpu").data)
    cfg = load_protocol("pointnet_cpu", {"data.points.scale_low": 0.8, "data.points.scale_high": 1.25,
                                         "data.points.shift": 0.1}).data
    a, b = PointStream(ds, 32, 7, cfg), PointStream(ds, 32, 7, cfg)
    for _ in range(3):
        xa, ya = a.next()
        xb, yb = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = PointStream(ds, 32, 7, cfg)
    c.load_state_dict(a.state_dict())
    assert all(torch.equal(u, v) for u, v in zip(a.next(), c.next()))
    other = PointStream(ds, 32, 8, cfg).next()[0]
    assert xa.shape == (32, cfg.points.num_points, 3) and not torch.equal(other, xa)
    # augmentation against its definition, in float64: p @ R_y(t) * s + shift + clip(noise)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 2.0], dtype=torch.float64)
    s, sh = torch.tensor([0.9, 1.2], dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    got = augment_points(x, t, s, sh, noise, 0.05)
    for b_ in range(2):
        c_, s_ = math.cos(t[b_]), math.sin(t[b_])
        for i in range(5):
            px, py, pz = x[b_, i].tolist()
            rot = [px * c_ - pz * s_, py, px * s_ + pz * c_]  # row vector times [[c,0,s],[0,1,0],[-s,0,c]]
            for k in range(3):
                want = rot[k] * s[b_] + sh[b_, k] + max(-0.05, min(0.05, float(noise[b_, i, k])))
                assert float(got[b_, i, k]) == pytest.approx(float(want), abs=1e-12)
    r = rotation_about_up(torch.tensor([0.7], dtype=torch.float64))[0]
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64)) and float(r[1, 1]) == 1.0


def test_random_sampling_takes_a_new_subset_each_epoch():
    ds = datasets.load("synthetic_shapes:2", load_protocol("pointnet_cpu").data)
    cfg = load_protocol("pointnet_cpu", {"data.points.sampling": "random", "data.points.rotate": False,
                                         "data.points.jitter_sigma": 0.0}).data
    st = PointStream(ds, 2000, 0, cfg)  # one batch per epoch: every shape, in epoch order
    x0, _ = st.next()
    x1, _ = st.next()
    P = cfg.points.num_points
    assert st.epoch == 2 and x0.shape == (2000, P, 3)
    # each row is a subset of its shape's points (no augmentation), and the subsets differ
    shape0 = ds.train_x[st.perm[0]] if st.epoch_loaded == 1 else None
    assert shape0 is not None
    members = (x1[0][:, None, :] == shape0[None]).all(-1).any(-1)
    assert bool(members.all())
    first = PointStream(ds, 2000, 0, load_protocol("pointnet_cpu", {"data.points.rotate": False,
                                                                    "data.points.jitter_sigma": 0.0}).data)
    xf, _ = first.next()
    assert torch.equal(xf, ds.train_x[first.perm][:, :P])


def test_protocol_schedules_follow_the_tf_formulas():
    p = load_protocol("pointnet_modelnet40")
    for it in (0, 6249, 6250, 12500, 76749):
        # tf.train.exponential_decay(0.001, it * 32, 200000, 0.7, staircase=True), max 1e-5
        assert p.lr_at(it) == pytest.approx(max(0.001 * 0.7 ** math.floor(it * 32 / 200000), 1e-5))
        # 1 - min(0.99, 1 - exponential_decay(0.5, it * 32, 200000, 0.5, staircase=True))
        decay = min(0.99, 1 - 0.5 * 0.5 ** math.floor(it * 32 / 200000))
        assert p.bn_momentum_at(it) == pytest.approx(1 - decay)
    assert p.bn_momentum_at(76749) == pytest.approx(0.01)
    assert p.iterations == 250 * (9840 // 32)


@pytest.mark.parametrize("override, message", [
    ({"optimizer.name": "rmsprop"}, "allowed: sgd, adam"),
    ({"optimizer.betas": [0.9]}, "optimizer.betas"),
    ({"optimizer.nesterov": True}, "applies to sgd only"),
    ({"schedule.every": 0}, "schedule.every"),
    ({"bn_momentum": 0.1}, "exclude each other"),
    ({"bn_momentum_schedule.minimum": 0.9}, "minimum <= initial"),
    ({"data.points.sampling": "fps"}, "allowed: first, random"),
    ({"data.points.scale_low": 2.0}, "scale_low"),
])
def test_bad_protocol_values_fail_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_protocol("pointnet_modelnet40", override)
    assert "\n" not in str(exc.value)


def test_run_ids_of_image_protocols_do_not_see_the_new_fields():
    d = load_protocol("paper_cifar").to_dict()
    assert "betas" not in d["optimizer"] and "points" not in d["data"]
    assert "bn_momentum_schedule" not in d and "every" not in d["schedule"]
    assert load_protocol("pointnet_modelnet40").to_dict()["bn_momentum_schedule"]["every"] == 6250


def test_adam_and_bn_momentum_reach_the_run(results_dir):
    proto = load_protocol("pointnet_cpu", {"iterations": 3, "eval_every": 3,
                                           "bn_momentum_schedule.every": 1})
    run = setup(RunSpec(proto, "synthetic_shapes:3", "pointnet_vanilla", "weight_decay", 0,
                        model_kwargs={"width": 0.125}))
    assert isinstance(run.opt, torch.optim.Adam) and run.opt.defaults["betas"] == (0.9, 0.999)
    bns = [m for m in run.model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(m.momentum == 0.5 for m in bns)
    run.set_bn_momentum(proto.bn_momentum_at(2))
    assert all(m.momentum == 0.125 for m in bns)


def test_mean_class_accuracy_against_its_definition():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (50,), generator=g)
    y[y == 3] = 4  # class 3 absent: averaged over the classes present, as the PointNet code
    hit = torch.rand(50, generator=g) < 0.6
    per = [sum(bool(h) for h, t in zip(hit, y) if t == c) / sum(1 for t in y if t == c)
           for c in range(5) if (y == c).any()]
    assert mean_class_accuracy(hit, y) == pytest.approx(100 * sum(per) / len(per), rel=1e-12)


# ---- the auxiliary-loss hook, on a model that is not PointNet


class AuxNet(nn.Module):
    """Linear classifier of 3-d mean points with one auxiliary loss: 0.25 * ||W||^2."""

    def __init__(self, num_classes=3, in_chans=3):
        super().__init__()
        self.fc = nn.Linear(in_chans, num_classes)
        self.weight_roles = weight_roles_from(self, first=[], output="fc.weight")

    def forward_with_aux(self, x):  # images (B, C, H, W) or points (B, P, C) -> (B, C) means
        z = x.flatten(2).mean(2) if x.dim() == 4 else x.mean(1)
        return self.fc(z), {"norm": 0.25 * self.fc.weight.square().sum()}

    def forward(self, x):
        return self.forward_with_aux(x)[0]


@pytest.fixture
def aux_model(monkeypatch):
    """A registered model with an auxiliary loss, for this test only (the registry is restored:
    tests/models checks that every registered model is exercised)."""
    monkeypatch.setattr(models.registry, "_BUILDERS", dict(models.registry._BUILDERS))
    models.register(name="test_auxnet")(lambda num_classes, in_chans=3: AuxNet(num_classes, in_chans))
    return "test_auxnet"


def test_aux_losses_are_in_the_loss_and_recorded_by_name(aux_model, results_dir):
    proto = load_protocol("pointnet_cpu", {"iterations": 2, "eval_every": 1})
    s = RunSpec(proto, "synthetic_shapes:3", aux_model, "weight_decay", 0)
    run = setup(s)
    x, y = run.stream.next()
    loss, ce, pen, aux = run.loss_fn(run.inputs(x), y)
    w = run.model.fc.weight
    want = 0.25 * float(w.detach().double().square().sum())
    assert set(aux) == {"norm"} and float(aux["norm"].detach()) == pytest.approx(want, rel=1e-6)
    assert float(loss.detach()) == pytest.approx(float(ce.detach()) + float(pen) + want, rel=1e-6)
    # the auxiliary term's gradient reaches the weights: 0.5 * W on top of that of CE + penalty
    (g_all,) = torch.autograd.grad(loss, w, retain_graph=True)
    (g_rest,) = torch.autograd.grad(ce + pen, w)
    torch.testing.assert_close(g_all, g_rest + 0.5 * w.detach())
    rec = train(s, results_dir, progress=False)
    assert len(rec["curves"]["aux"]["norm"]) == 2 and rec["final"]["aux"]["norm"] > 0


def test_paths_that_cannot_take_the_hook_or_points_fail_before_the_run(aux_model, results_dir):
    graph = load_protocol("pointnet_cpu", {"runtime.compile": "graph"})
    with pytest.raises(ConfigError, match="runtime.compile=graph does not support point-cloud"):
        validate(RunSpec(graph, "synthetic_shapes", "pointnet", "weight_decay", 0))
    img = load_protocol("smoke", {"runtime.compile": "graph"})
    with pytest.raises(ConfigError, match="does not support optimizer.name=adam"):
        validate(RunSpec(load_protocol("smoke", {"runtime.compile": "graph", "optimizer.name": "adam"}),
                         "digits", "cnn9", "weight_decay", 0, model_kwargs={"width": 0.125}))
    with pytest.raises(ConfigError, match=r"does not support models with auxiliary losses \(test_auxnet\)"):
        validate(RunSpec(img, "digits", aux_model, "weight_decay", 0))

    specs = [RunSpec(load_protocol("pointnet_cpu"), "synthetic_shapes", "pointnet", "mhe", s) for s in (0, 1)]
    with pytest.raises(ConfigError, match="point-cloud datasets .* cannot be packed"):
        check_packable(specs)
    specs = [RunSpec(load_protocol("smoke"), "digits", aux_model, "mhe", s) for s in (0, 1)]
    with pytest.raises(ConfigError, match="auxiliary losses"):
        check_packable(specs)


def test_image_models_refuse_point_clouds_before_the_run():
    with pytest.raises(ConfigError, match=r"model 'cnn9' cannot take point clouds of shape \(128, 3\)"):
        validate(RunSpec(load_protocol("pointnet_cpu"), "synthetic_shapes", "cnn9", "mhe", 0))


def test_store_and_report_show_mean_class_accuracy(tmp_path, capsys):
    results = tmp_path / "runs"
    proto = load_protocol("pointnet_cpu", {"iterations": 2, "eval_every": 2})
    for reg in ("weight_decay", "mhe"):
        for seed in (0, 1):
            train(RunSpec(proto, "synthetic_shapes:3", "pointnet_vanilla", reg, seed,
                          model_kwargs={"width": 0.125}), results, progress=False)
    # 2 iterations leave the runs near chance: "stuck", counted only with --include-stuck; the
    # report must get through the paper comparison with no counted run too
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep0")]) == 0, \
        capsys.readouterr()
    assert not (tmp_path / "rep0" / "table_mean_class_acc.md").exists()
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"),
                 "--include-stuck"]) == 0, \
        capsys.readouterr()
    md = (tmp_path / "rep" / "table_mean_class_acc.md").read_text()
    assert "# Test mean class accuracy (%) by regularizer (SYNTHETIC)" in md and "| mhe |" in md
    # what its tests are: the Wilcoxon on the per-seed values (no counts behind a mean of
    # per-class rates), no McNemar SE (the per-image bits give overall accuracy's)
    assert "Final-iteration test mean class accuracy (%)" in md
    assert "Wilcoxon signed-rank test on the per-seed values" in md and "error counts" not in md
    # at 2 seeds the exact Wilcoxon cannot reach Holm's threshold: its column is left out
    assert "so it cannot reject and its column is left out" in md and "p (Wilcoxon" not in md
    mhe_row = next(line for line in md.splitlines() if line.startswith("| mhe | 2 stuck |"))
    assert mhe_row.split("|")[-2].strip() == "n/a", mhe_row  # the image-level column
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "Wilcoxon signed-rank test on error counts" in table
    runs, _ = build_store(results)
    assert runs["test_mean_class_acc"].between(0, 100).all() and len(runs) == 4


def test_distributed_runs_refuse_point_clouds_and_auxiliary_losses(monkeypatch, aux_model):
    """Under torchrun (WORLD_SIZE > 1) the sharded stream is image-only and DDP's forward has no
    auxiliary-loss hook: both are refused before the run, in one line."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    proto = load_protocol("pointnet_cpu")
    with pytest.raises(ConfigError, match=r"^distributed runs \(world size 2\) do not support "
                                          r"point-cloud datasets yet"):
        validate(RunSpec(proto, "synthetic_shapes", "pointnet", "weight_decay", 0,
                         model_kwargs={"width": 0.25}))
    with pytest.raises(ConfigError, match=r"do not support models with auxiliary losses \(test_auxnet\)"):
        validate(RunSpec(load_protocol("smoke"), "digits", aux_model, "weight_decay", 0))
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: both are fine
    validate(RunSpec(load_protocol("smoke"), "digits", aux_model, "weight_decay", 0))


def test_a_regularizer_that_cannot_split_a_layer_fails_before_the_run():
    """G-CoMHE's groups must divide every projected fan-in: at width 0.125 a shared layer
    (mlp1's second conv) has fan-in 8, which 8 groups of >= 2 coordinates cannot split; with
    regularize_tnets a T-Net layer is the first such. validate says so in one line, before any
    data loads (it used to fail only when the run attached the regularizer)."""
    proto = load_protocol("pointnet_cpu")
    for kwargs, layer in (({}, r"mlp1\.3\.weight"), ({"regularize_tnets": True}, r"input_tnet\.mlp\.3\.weight")):
        with pytest.raises(ConfigError, match=rf"^g_comhe: layer '{layer}' has fan-in "
                                              r"d=8; groups=8 must divide d .* \(model pointnet\)$"):
            validate(RunSpec(proto, "synthetic_shapes", "pointnet", "g_comhe", 0,
                             model_kwargs={"width": 0.125, **kwargs}))
    validate(RunSpec(proto, "synthetic_shapes", "pointnet", "g_comhe", 0, model_kwargs={"width": 0.25}))


@pytest.mark.parametrize("dataset, stored", [("synthetic_shapes", 1024), ("modelnet40", 2048)])
def test_more_points_than_a_shape_stores_fail_before_the_run(dataset, stored, monkeypatch, tmp_path):
    """data.points.num_points above what the dataset stores per shape is one line from
    validate (it used to fail only once the data had loaded); the stored count itself is fine."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    monkeypatch.setenv("COMHE_DOWNLOAD", "1")  # modelnet40's files need not be here for this
    too_many = load_protocol("pointnet_cpu", {"data.points.num_points": stored + 1})
    with pytest.raises(ConfigError, match=rf"^data\.points\.num_points={stored + 1} is more than "
                                          rf"the {stored} points {dataset} stores per shape; "
                                          rf"allowed: 1-{stored}$"):
        validate(RunSpec(too_many, dataset, "pointnet", "weight_decay", 0, model_kwargs={"width": 0.25}))
    exact = load_protocol("pointnet_cpu", {"data.points.num_points": stored})
    validate(RunSpec(exact, dataset, "pointnet", "weight_decay", 0, model_kwargs={"width": 0.25}))


def _summed_rate(proto, scale=1.0):
    return scale * sum(proto.lr_at(it) for it in range(proto.iterations))


def test_ap_adv_projections_move_comparably_under_sgd_and_adam():
    """AP/Adv-CoMHE step P by plain SGD at proj_lr_scale x the network's lr (released: scale 1,
    rmlin/CoMHE angle_projection/train.py updatep_op). Under paper_cifar (SGD 0.1) the default
    is the released rate; the modelnet40 suite (Adam 1e-3, both profiles) sets 0.1 / 1e-3 = 100,
    so P moves about as far as under the released SGD recipe, instead of ~150x less."""
    import regularizers
    from benchmark.suites import load_suite

    paper = load_protocol("paper_cifar")
    for profile in (None, "cpu"):
        suite = load_suite("modelnet40", profile=profile, validate=False)
        assert suite.protocol.optimizer.name == "adam" and suite.protocol.optimizer.lr == 1e-3
        rows = {r.name: r.hparams for r in suite.regularizers}
        for name in ("ap_comhe", "adv_comhe"):
            assert rows[name] == {"proj_lr_scale": 0.1 / suite.protocol.optimizer.lr}
    # over the whole run: the sum of P's step sizes
    adam = load_protocol("pointnet_modelnet40")
    sgd_total = _summed_rate(paper)                     # 3,216 (0.1 x 30k + 0.01 x 20k + ...)
    assert 0.5 < _summed_rate(adam, 100.0) / sgd_total < 2       # 0.64
    assert _summed_rate(adam) / sgd_total < 1 / 100             # the released rate: 1/155
    # 200 inner steps on a PointNet layer, W fixed: relative movement of P
    torch.manual_seed(0)
    net = models.create("pointnet", num_classes=10, width=0.25).double()

    only = {n: ("hidden" if n == "mlp2.3.weight" else "none") for n in net.weight_roles}

    def moved(lr, **hp):
        reg = regularizers.create("ap_comhe", **hp).attach(net, roles=only, seed=0)
        p0 = reg.projection("mlp2.3.weight").clone()
        for _ in range(200):
            reg.before_step(lr)
        return float((reg.projection("mlp2.3.weight") - p0).norm() / p0.norm())

    at_sgd = moved(paper.lr_at(0))                                   # released: scale 1 at 0.1
    at_adam = moved(adam.lr_at(0), proj_lr_scale=100.0)              # the suite's choice
    frozen = moved(adam.lr_at(0))                                    # released rate under Adam
    assert at_sgd > 1e-2
    assert 0.5 < at_adam / at_sgd < 2
    assert frozen < at_sgd / 20


def test_proj_lr_scale_at_its_default_keeps_the_committed_run_ids():
    """proj_lr_scale is HParam(added=True): at its default it stays out of the run identity, so
    the committed SGD records of ap_comhe / adv_comhe (quick, fashion) keep their ids."""
    from pathlib import Path

    from benchmark.suites import load_suite

    root = Path(__file__).resolve().parents[2] / "results"
    for name in ("quick", "fashion"):
        have = {p.stem for p in (root / name / "runs").glob("*.json")}
        specs = [s for s in load_suite(name, validate=False).expand()
                 if s.regularizer in ("ap_comhe", "adv_comhe")]
        assert specs and all(s.run_id in have for s in specs), name
    proto = load_protocol("cpu_quick")
    ids = {RunSpec(proto, "digits", "cnn9", "ap_comhe", 0, regularizer_hparams=hp).run_id
           for hp in ({}, {"proj_lr_scale": 1}, {"proj_lr_scale": 1.0})}
    assert len(ids) == 1
    scaled = RunSpec(proto, "digits", "cnn9", "ap_comhe", 0, regularizer_hparams={"proj_lr_scale": 100})
    assert scaled.run_id not in ids and scaled.identity()["regularizer_hparams"]["proj_lr_scale"] == 100
