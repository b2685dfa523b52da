"""Datasets: digits offline, image folders, missing torchvision data, resumable data order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm.errors import DatasetError
from ddpm.training.datasets import DataOrder, load_dataset


def test_digits_are_offline_labelled_and_scaled_to_minus_one_one():
    ds = load_dataset("digits", image_size=16)
    assert len(ds) == 1797 and ds.channels == 1 and ds.num_classes == 10
    assert ds.class_names == [str(i) for i in range(10)]
    x, y = ds.batch(torch.arange(len(ds)))
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    # 8x8 pixels 0..16 map to [-1, 1]; bilinear resizing stays inside the range.
    assert x.min() == -1.0 and x.max() == 1.0
    native, _ = load_dataset("digits", image_size=8).batch(torch.arange(3))
    from sklearn.datasets import load_digits

    expected = torch.from_numpy(load_digits().images[:3]).float() / 8.0 - 1.0
    torch.testing.assert_close(native[:, 0], expected, rtol=0, atol=1e-6)
    info = ds.data_info()
    assert info["value_range"] == [-1.0, 1.0] and info["image_size"] == 16


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (20, 30, 3), np.uint8))
    ds = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert len(ds) == 6 and ds.channels == 3 and ds.num_classes == 2
    assert ds.class_names == ["cats", "dogs"]
    x, y = ds.batch(torch.arange(6))
    assert x.shape == (6, 3, 8, 8) and -1.0 <= x.min() and x.max() <= 1.0
    assert y.tolist() == [0, 0, 0, 1, 1, 1]


def test_flat_folder_is_unlabelled_and_grayscale_stays_one_channel(tmp_path):
    white = np.full((12, 12), 255, np.uint8)
    for i in range(2):
        _write_png(tmp_path / f"{i}.png", white)
    ds = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert ds.num_classes == 0 and ds.class_names is None and ds.channels == 1
    x, _ = ds.batch(torch.arange(2))
    torch.testing.assert_close(x, torch.ones(2, 1, 4, 4), rtol=0, atol=0)


def test_bad_dataset_names_and_folders(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*digits"):
        load_dataset("imagenet", image_size=16)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}", image_size=16)
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(f"folder:{tmp_path}", image_size=16)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        load_dataset(f"folder:{tmp_path}", image_size=16)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_torchvision_data_missing_without_download(tmp_path, name):
    with pytest.raises(DatasetError) as e:
        load_dataset(name, image_size=16, data_root=tmp_path)
    msg = str(e.value)
    assert f"{name} not found in {str(tmp_path)!r}" in msg and "--download" in msg
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing created


def test_data_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
    order = DataOrder(n=10, batch_size=4, seed=7)
    first = torch.cat([order.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(first[:10].tolist()) == list(range(10))
    assert sorted(first[10:].tolist()) == list(range(10))
    assert not torch.equal(first[:10], first[10:])  # a fresh permutation per epoch
    fresh = DataOrder(n=10, batch_size=4, seed=7)  # e.g. after --resume: no shared state
    assert torch.equal(fresh.indices(3), order.indices(3))
    assert not torch.equal(DataOrder(10, 4, seed=8).indices(0), order.indices(0))
