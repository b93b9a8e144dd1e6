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


OFFLINE = {"fashion-mnist", "digits", "mnist-5k", "natural-crops", "stamps"}


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


# ------------------------------------------------------------------------------------------ folder:PATH


def write_image(path: Path, rgb, size=(12, 10), mode="RGB", alpha=None):
    """A PNG or JPEG (by suffix) of one colour; RGBA with the given alpha."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": tuple(rgb), "RGBA": (*rgb, alpha), "L": rgb[0]}[mode]
    Image.new(mode, size, colour).save(path)


def test_a_folder_of_class_folders_is_labelled_as_imagefolder(tmp_path):
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        for index in range(5):
            write_image(tmp_path / "pets" / name / f"{index}.png", colour)
    write_image(tmp_path / "pets" / "dog" / "deeper" / "x.JPG", (0, 250, 0))  # any depth, any case of suffix
    (tmp_path / "pets" / "notes.txt").write_text("not an image")
    data = load_dataset("folder:pets", "all", root=tmp_path, image_size=16)
    check(data, 11, 2, 16)
    assert data.labels.tolist() == [0] * 5 + [1] * 6 and data.num_classes == 2
    assert data.images[0, :, 0, 0].tolist() == [255, 0, 0]
    train = load_dataset(f"folder:{tmp_path / 'pets'}", "train", root=Path("elsewhere"), image_size=16)  # absolute
    test = load_dataset("folder:pets", "test", root=tmp_path, image_size=16)
    assert len(train) + len(test) == 11 and sorted(test.labels.tolist()) == [0, 1]  # each class gives test images
    again = load_dataset(f"folder:{tmp_path / 'pets'}/", "test", root=Path("."), image_size=16)
    assert torch.equal(again.images, test.images)  # the seeded split is the same every time


def test_images_in_the_folder_itself_make_an_unlabeled_set_with_transparency_on_black(tmp_path):
    write_image(tmp_path / "mine" / "a.png", (200, 100, 50), mode="RGBA", alpha=0)
    write_image(tmp_path / "mine" / "b.jpeg", (10, 20, 30))
    write_image(tmp_path / "mine" / "sub" / "c.png", (1, 2, 3), mode="L")
    data = load_dataset("folder:mine", "all", root=tmp_path, image_size=8)
    check(data, 3, None, 8)
    assert data.images[0].max() == 0  # fully transparent: black
    assert (data.images[2, 0] == data.images[2, 1]).all()  # grayscale repeated to 3 channels


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for name in ("boot", "shirt"):
            for index in range(count):
                write_image(tmp_path / "shop" / split / name / f"{index}.png", (index, 0, 0))
    write_image(tmp_path / "shop" / "test" / "sandal" / "0.png", (9, 9, 9))  # a class only the test split has
    train = load_dataset("folder:shop", "train", root=tmp_path, image_size=8)
    test = load_dataset("folder:shop", "test", root=tmp_path, image_size=8)
    assert len(train) == 6 and len(test) == 5 and len(load_dataset("folder:shop", "all", root=tmp_path, image_size=8)) == 11
    assert train.num_classes == test.num_classes == 3  # boot 0, sandal 1, shirt 2 in both splits
    assert train.labels.tolist() == [0, 0, 0, 2, 2, 2] and test.labels.tolist() == [0, 0, 1, 2, 2]


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "no folder"),
    (lambda root: (root / "empty").mkdir(), "no PNG or JPEG images"),
    (lambda root: (root / "empty").mkdir() or (root / "empty" / "bad.png").write_bytes(b"not a png"), "bad.png is not a readable"),
])
def test_a_missing_empty_or_corrupt_folder_is_one_clear_error(make, message, tmp_path):
    make(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_dataset("folder:empty", "all", root=tmp_path, image_size=8)


def test_folder_names_in_the_config(tmp_path):
    from encsteal.config import ConfigError, config_from_dict

    config = config_from_dict({"surrogate": {"scenario": "different-distribution", "dataset": "folder:my photos"},
                               "evaluate": {"downstream": [{"dataset": "folder:/srv/shoes", "train_split": "all"}]}})
    assert config.surrogate.dataset == "folder:my photos"
    with pytest.raises(ConfigError, match="folder:PATH"):
        config_from_dict({"surrogate": {"scenario": "different-distribution", "dataset": "folder:"}})
    with pytest.raises(DatasetError, match="no split 'val'"):
        load_dataset("folder:x", "val", root=tmp_path, image_size=8)


# ---------------------------------------------------------------------------------------------- stamps


def test_stamps_are_objects_on_black_without_clothing(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "stamps"
    for index, (kind, colour) in enumerate([("animals/birds", (255, 0, 0)), ("food", (0, 255, 0)), ("clothes", (0, 0, 255))]):
        (folder / kind).mkdir(parents=True)
        image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # a wide object on a transparent ground
        image.paste(Image.new("RGBA", (30, 10), (*colour, 255)), (5, 5))
        image.save(folder / kind / f"{index}.png")
    (folder / "food" / "1.svg").write_text("<svg/>")  # drawings in SVG are not read
    monkeypatch.setenv("ENCSTEAL_STAMPS_DIR", str(folder))
    monkeypatch.setitem(offline.STAMPS, "test", (64, 1))
    data = offline.stamps("test", Path("unused"), 32)
    check(data, 64, None, 32)
    blue = data.images[:, 2].float().sum()
    assert blue == 0  # clothing left out
    red, green = (data.images[:, c].amax(dim=(1, 2)) > 200 for c in (0, 1))
    assert red.sum() == green.sum() == 32 and not (red & green).any()  # one stamp per image, both equally often
    corners = data.images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).float().mean() > 0.9  # on black
    assert torch.equal(offline.stamps("test", Path("unused"), 32).images, data.images)  # seeded
    monkeypatch.setenv("ENCSTEAL_STAMPS_DIR", str(tmp_path / "none"))
    with pytest.raises(DatasetError, match="tuxpaint-stamps-default"):
        offline.stamps("test", Path("unused"), 32)
