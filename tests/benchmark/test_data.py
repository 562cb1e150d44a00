import numpy as np
import pytest
import torch

from benchmark.config import ConfigError, Data, load_protocol
from benchmark.data.images import BatchStream, augment, pad_index
from benchmark.data.datasets import check_name as check_dataset_name
from benchmark.data.datasets import load as load_dataset


@pytest.mark.parametrize("mode", ["symmetric", "reflect"])
def test_pad_index_matches_numpy_pad(mode):
    row = np.arange(7)
    expected = np.pad(row, 3, mode=mode)
    assert pad_index(7, 3, mode).tolist() == expected.tolist()


def _reference_augment(img, oy, ox, flip, pad, mode):
    """Per-image reference: numpy pad (TF SYMMETRIC == numpy 'symmetric'), crop, flip."""
    c, h, w = img.shape
    np_mode = {"symmetric": "symmetric", "reflect": "reflect", "zeros": "constant"}[mode]
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode=np_mode)
    out = padded[:, oy : oy + h, ox : ox + w]
    return out[:, :, ::-1] if flip else out


@pytest.mark.parametrize("mode", ["symmetric", "reflect", "zeros"])
def test_batched_augmentation_equals_per_image_reference(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 10), generator=g, dtype=torch.uint8)
    oy = torch.randint(0, 9, (16,), generator=g)
    ox = torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    out = augment(x, oy, ox, flip, 4, mode)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(16):
        ref = _reference_augment(x[i].numpy(), int(oy[i]), int(ox[i]), bool(flip[i]), 4, mode)
        np.testing.assert_array_equal(out[i].numpy(), ref)


def test_stream_reshuffles_each_epoch_drops_last_and_is_seeded():
    ds = load_dataset("synthetic", Data(max_train=100, max_test=10))
    s = BatchStream(ds, 32, seed=3, cfg=Data())
    assert s.per_epoch == 3  # 100 // 32, last 4 images dropped
    batches = [s.next() for _ in range(6)]
    assert s.state_dict() == {"epoch": 2, "position": 0}
    # Same seed -> identical stream; other seed -> different order.
    s2 = BatchStream(ds, 32, seed=3, cfg=Data())
    assert all(torch.equal(a[0], s2.next()[0]) for a in batches)
    s3 = BatchStream(ds, 32, seed=4, cfg=Data())
    assert not torch.equal(batches[0][1], s3.next()[1])
    # Epochs differ in order.
    assert not torch.equal(batches[0][1], batches[3][1])
    # Resuming from (epoch, position) continues the same stream.
    s4 = BatchStream(ds, 32, seed=3, cfg=Data())
    s4.load_state_dict({"epoch": 1, "position": 1})
    assert torch.equal(s4.next()[0], batches[4][0])


def test_digits_are_offline_and_resized():
    ds = load_dataset("digits", load_protocol("cpu_quick").data)
    assert ds.train_x.shape[1:] == (1, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.num_classes == 10 and len(ds.train_x) + len(ds.test_x) == 1797
    assert int(ds.train_x.max()) == 255


def test_unknown_dataset_and_missing_files(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        check_dataset_name("cifar-10")
    with pytest.raises(ConfigError, match="synthetic:<classes>"):
        check_dataset_name("digits:3")
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match="cifar100 not found.*cifar-100-python"):
        load_dataset("cifar100", Data())
