"""Every dataset in the registry loads as uint8 N x 3 x S x S: the offline ones for real, the torchvision
ones from tiny files fabricated in their exact on-disk formats (nothing is ever downloaded)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from encsteal.data import DATASETS, DatasetError, load_dataset, offline, to_images
from fabricate import FABRICATORS, fabricate_idx_pair, fabricate_svhn, write_idx

rng = np.random.default_rng(0)


def check(data, n, num_classes, size=32):
    assert data.images.dtype == torch.uint8 and data.images.shape == (n, 3, size, size)
    assert data.images.is_contiguous()
    if num_classes is None:
        assert data.labels is None
    else:
        assert data.labels.dtype == torch.int64 and data.labels.shape == (n,)
        assert 0 <= int(data.labels.min()) and int(data.labels.max()) < num_classes


# ---------------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("size", [32, 64])
def test_digits(size):
    train = load_dataset("digits", "train", root=Path("unused"), image_size=size)
    test = load_dataset("digits", "test", root=Path("unused"), image_size=size)
    check(train, 1257, 10, size)
    check(test, 540, 10, size)
    assert train.images.max() > 200  # 0..16 was scaled to 0..255


def test_mnist_5k():
    train = load_dataset("mnist-5k", "train", root=Path("unused"), image_size=32)
    test = load_dataset("mnist-5k", "test", root=Path("unused"), image_size=32)
    check(train, 4000, 10, 32)
    check(test, 1000, 10, 32)
    assert torch.bincount(test.labels).tolist() == [100] * 10  # stratified: 500 per class in all
    assert train.images.max() == 255 and train.images[:, 0].float().mean() < 60  # white digits on black


@pytest.mark.parametrize("size", [32, 64])
def test_natural_crops(size):
    train = load_dataset("natural-crops", "train", root=Path("unused"), image_size=size)
    test = load_dataset("natural-crops", "test", root=Path("unused"), image_size=size)
    check(train, 20_000, None, size)
    check(test, 2_000, None, size)
    assert not torch.equal(train.images[:2000], test.images)
    # deterministic: the same crops when built again (bypassing the in-process memo)
    again = offline.natural_crops("test", Path("unused"), size)
    assert torch.equal(again.images, test.images)
    # natural photos: colour, varied content
    assert train.images.float().std() > 30
    assert (train.images[:, 0] != train.images[:, 1]).any()


def test_fashion_mnist_from_debian_layout(tmp_path, monkeypatch):
    images, labels = fabricate_idx_pair(tmp_path / "deb", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 5, gz=True)
    monkeypatch.setenv("ENCSTEAL_FASHION_MNIST_DIR", str(tmp_path / "deb"))
    data = offline.fashion_mnist("test", tmp_path / "root", 28)
    check(data, 5, 10, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))  # 28 -> 28: pixels untouched, channels repeated
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    assert data.labels.tolist() == labels.tolist()


def test_fashion_mnist_from_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCSTEAL_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    fabricate_idx_pair(tmp_path / "FashionMNIST" / "raw", "train-images-idx3-ubyte", "train-labels-idx1-ubyte", 7, gz=False)
    check(offline.fashion_mnist("train", tmp_path, 32), 7, 10)


def test_fashion_mnist_missing_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCSTEAL_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        offline.fashion_mnist("train", tmp_path, 32)


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)), gz=False)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        offline.read_idx(path)


@pytest.mark.skipif(not (offline.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_sizes():
    check(load_dataset("fashion-mnist", "train", root=Path("unused"), image_size=32), 60_000, 10)
    check(load_dataset("fashion-mnist", "test", root=Path("unused"), image_size=32), 10_000, 10)


OFFLINE = {"fashion-mnist", "digits", "mnist-5k", "natural-crops"}


def test_every_registered_dataset_is_tested():
    assert set(DATASETS) == set(FABRICATORS) | OFFLINE


@pytest.mark.parametrize("name", sorted(FABRICATORS))
def test_torchvision_dataset_from_fabricated_files(name, tmp_path, monkeypatch):
    root = tmp_path / "data"
    for split, n, num_classes in FABRICATORS[name](root, monkeypatch):
        data = load_dataset(name, split, root=root, image_size=32)
        check(data, n, num_classes)


def test_svhn_label_ten_is_digit_zero(tmp_path, monkeypatch):
    fabricate_svhn(tmp_path, monkeypatch)
    assert load_dataset("svhn", "train", root=tmp_path, image_size=32).labels.tolist() == [0, 1, 5]


@pytest.mark.parametrize("name", sorted(FABRICATORS))
def test_missing_torchvision_dataset_is_a_clear_error(name, tmp_path):
    with pytest.raises(DatasetError, match="never downloads"):
        load_dataset(name, DATASETS[name].splits[0], root=tmp_path / "empty", image_size=32)


def test_unknown_name_or_split():
    with pytest.raises(DatasetError, match="known: .*fashion-mnist"):
        load_dataset("cifar11", "train", root=Path("."), image_size=32)
    with pytest.raises(DatasetError, match="splits: train, test"):
        load_dataset("digits", "validation", root=Path("."), image_size=32)


def test_to_images_layouts():
    gray = rng.integers(0, 256, (2, 10, 12), dtype=np.uint8)
    rgba = rng.integers(0, 256, (2, 10, 12, 4), dtype=np.uint8)
    chw = rng.integers(0, 256, (2, 3, 10, 12), dtype=np.uint8)
    for array, layout in [(gray, "NHWC"), (rgba, "NHWC"), (chw, "NCHW")]:
        out = to_images(array, 16, layout=layout)
        assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8
    flat = np.full((1, 8, 8), 77, dtype=np.uint8)
    assert (to_images(flat, 32) == 77).all()  # resizing a constant image keeps it constant
