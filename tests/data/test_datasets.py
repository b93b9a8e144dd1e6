"""Every dataset in the registry loads as uint8 N x 3 x S x S: the offline ones for real, the torchvision
ones from tiny files fabricated in their exact on-disk formats (nothing is ever downloaded)."""

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from encsteal.data import DATASETS, DatasetError, load_dataset, offline, to_images

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


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as out:
            out.write(data)
    else:
        path.write_bytes(data)


def fabricate_idx_pair(folder: Path, images_stem: str, labels_stem: str, n: int, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    write_idx(folder / images_stem, images, gz)
    write_idx(folder / labels_stem, labels, gz)
    return images, labels


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


# ------------------------------------------------------------------------------------------ torchvision
# Each fabricator writes the real on-disk format under `root` and returns (split, n, num_classes).
# torchvision checks the md5 sums of genuine CIFAR, STL10 and SVHN files, which fabricated files cannot
# match: for those only the checksum test is patched out; parsing goes through torchvision's real code.


def fabricate_cifar10(root: Path, monkeypatch):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]:
        with open(folder / name, "wb") as out:
            pickle.dump({"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 9]}, out)
    with open(folder / "test_batch", "wb") as out:
        pickle.dump({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 4, 2]}, out)
    with open(folder / "batches.meta", "wb") as out:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, out)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    return [("train", 10, 10), ("test", 3, 10)]


def fabricate_cifar100(root: Path, monkeypatch):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in [("train", 4), ("test", 2)]:
        with open(folder / name, "wb") as out:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(90, 90 + n))}, out)
    with open(folder / "meta", "wb") as out:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, out)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    return [("train", 4, 100), ("test", 2, 100)]


def fabricate_stl10(root: Path, monkeypatch):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for name, n in [("train", 3), ("test", 2), ("unlabeled", 4)]:
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{name}_X.bin")
        if name != "unlabeled":
            rng.integers(1, 11, n, dtype=np.uint8).tofile(folder / f"{name}_y.bin")  # STL10 labels are 1..10
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    (folder / "fold_indices.txt").write_text("0 1 2\n")
    monkeypatch.setattr("torchvision.datasets.stl10.STL10._check_integrity", lambda self: True)
    return [("train", 3, 10), ("test", 2, 10), ("unlabeled", 4, None), ("train+unlabeled", 7, None)]


def fabricate_svhn(root: Path, monkeypatch):
    root.mkdir(parents=True, exist_ok=True)
    for name, n in [("train", 3), ("test", 2)]:
        scipy.io.savemat(root / f"{name}_32x32.mat", {
            "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
            "y": np.array([[10], [1], [5]][:n], dtype=np.uint8),  # SVHN stores the digit 0 as label 10
        })
    monkeypatch.setattr("torchvision.datasets.svhn.SVHN._check_integrity", lambda self: True)
    return [("train", 3, 10), ("test", 2, 10)]


def fabricate_mnist(root: Path, monkeypatch):
    raw = root / "MNIST" / "raw"
    fabricate_idx_pair(raw, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", 4, gz=False)
    fabricate_idx_pair(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 3, gz=False)
    return [("train", 4, 10), ("test", 3, 10)]


def save_image(path: Path, size: tuple[int, int], fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)


def fabricate_gtsrb(root: Path, monkeypatch):
    base = root / "gtsrb"
    for cls in (0, 2):
        for i in range(2):
            save_image(base / "GTSRB" / "Training" / f"{cls:05d}" / f"00000_{i:05d}.ppm", (30 + i, 29), "PPM")
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate([42, 7, 0]):
        save_image(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", (40, 41), "PPM")
        rows.append(f"{i:05d}.ppm;41;40;5;5;35;35;{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return [("train", 4, 43), ("test", 3, 43)]


def fabricate_food101(root: Path, monkeypatch):
    base = root / "food-101"
    meta = {"train": {"apple_pie": ["apple_pie/1", "apple_pie/2"], "ramen": ["ramen/3"]},
            "test": {"apple_pie": ["apple_pie/4"], "ramen": ["ramen/5"]}}
    (base / "meta").mkdir(parents=True)
    for split, classes in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(classes))
        for files in classes.values():
            for name in files:
                save_image(base / "images" / f"{name}.jpg", (50, 64), "JPEG")
    return [("train", 3, 2), ("test", 2, 2)]


def fabricate_imagenet(root: Path, monkeypatch):
    for split, n in [("train", 2), ("val", 1)]:
        for cls in ("n01440764", "n01443537"):
            for i in range(n):
                save_image(root / "imagenet" / split / cls / f"{cls}_{i}.JPEG", (60, 45), "JPEG")
    return [("train", 4, 2), ("val", 2, 2)]


FABRICATORS = {
    "cifar10": fabricate_cifar10,
    "cifar100": fabricate_cifar100,
    "stl10": fabricate_stl10,
    "svhn": fabricate_svhn,
    "mnist": fabricate_mnist,
    "gtsrb": fabricate_gtsrb,
    "food101": fabricate_food101,
    "imagenet": fabricate_imagenet,
}
OFFLINE = {"fashion-mnist", "digits", "natural-crops"}


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
