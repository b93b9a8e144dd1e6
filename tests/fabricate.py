"""Tiny files in the real on-disk formats of the torchvision datasets, for tests that must never download."""

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

rng = np.random.default_rng(0)


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


def fabricate_all(root: Path, monkeypatch) -> Path:
    """Every torchvision dataset of the registry under one data root."""
    for fabricate in FABRICATORS.values():
        fabricate(root, monkeypatch)
    return root
