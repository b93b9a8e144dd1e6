"""The paper's datasets through torchvision, from files under the data root. Nothing is downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from encsteal.data.common import DatasetError, ImageSet, to_images


def _open(name: str, folder: str, make: Callable[[], object]):
    """Build a torchvision dataset with download=False; its "not found" becomes one clear DatasetError."""
    try:
        return make()
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise DatasetError(
            f"{name} not found under {folder} ({str(exc).splitlines()[0]}); encsteal never downloads: "
            f"put torchvision's {name} files there or point data.root / $ENCSTEAL_DATA at the folder that holds them"
        ) from None


def _from_files(samples: list[tuple[str, int]], image_size: int) -> torch.Tensor:
    """Decode image files one by one (PIL) into uint8 N x 3 x S x S."""
    from PIL import Image

    out = torch.empty((len(samples), 3, image_size, image_size), dtype=torch.uint8)
    for index, (path, _) in enumerate(samples):
        with Image.open(path) as image:
            out[index] = to_images(np.asarray(image.convert("RGB"))[None], image_size)[0]
    return out


def cifar10(split: str, root: Path, image_size: int) -> ImageSet:
    from torchvision.datasets import CIFAR10

    data = _open("CIFAR10", f"{root}/cifar-10-batches-py", lambda: CIFAR10(str(root), train=split == "train", download=False))
    return ImageSet(to_images(data.data, image_size), torch.tensor(data.targets, dtype=torch.int64), 10)


def cifar100(split: str, root: Path, image_size: int) -> ImageSet:
    from torchvision.datasets import CIFAR100

    data = _open("CIFAR100", f"{root}/cifar-100-python", lambda: CIFAR100(str(root), train=split == "train", download=False))
    return ImageSet(to_images(data.data, image_size), torch.tensor(data.targets, dtype=torch.int64), 100)


def stl10(split: str, root: Path, image_size: int) -> ImageSet:
    """STL10's train (5k), test (8k), unlabeled (100k) and train+unlabeled splits; unlabeled has no labels."""
    from torchvision.datasets import STL10

    data = _open("STL10", f"{root}/stl10_binary", lambda: STL10(str(root), split=split, download=False))
    labels = None if split in ("unlabeled", "train+unlabeled") else torch.from_numpy(data.labels.astype(np.int64))
    return ImageSet(to_images(data.data, image_size, layout="NCHW"), labels, 10 if labels is not None else None)


def svhn(split: str, root: Path, image_size: int) -> ImageSet:
    from torchvision.datasets import SVHN

    data = _open("SVHN", str(root), lambda: SVHN(str(root), split=split, download=False))
    return ImageSet(to_images(data.data, image_size, layout="NCHW"), torch.from_numpy(data.labels.astype(np.int64)), 10)


def mnist(split: str, root: Path, image_size: int) -> ImageSet:
    from torchvision.datasets import MNIST

    data = _open("MNIST", f"{root}/MNIST/raw", lambda: MNIST(str(root), train=split == "train", download=False))
    return ImageSet(to_images(data.data, image_size), data.targets.to(torch.int64), 10)


def gtsrb(split: str, root: Path, image_size: int) -> ImageSet:
    from torchvision.datasets import GTSRB

    data = _open("GTSRB", f"{root}/gtsrb", lambda: GTSRB(str(root), split=split, download=False))
    samples = data._samples
    return ImageSet(_from_files(samples, image_size), torch.tensor([label for _, label in samples], dtype=torch.int64), 43)


def food101(split: str, root: Path, image_size: int) -> ImageSet:
    from torchvision.datasets import Food101

    data = _open("Food101", f"{root}/food-101", lambda: Food101(str(root), split=split, download=False))
    samples = list(zip(map(str, data._image_files), data._labels))
    return ImageSet(_from_files(samples, image_size), torch.tensor(data._labels, dtype=torch.int64), len(data.classes))


def imagenet(split: str, root: Path, image_size: int) -> ImageSet:
    """ImageNet (or any image folder tree) as torchvision's ImageFolder: <root>/imagenet/<split>/<class>/<image>."""
    from torchvision.datasets import ImageFolder

    folder = root / "imagenet" / split
    data = _open("ImageNet", str(folder), lambda: ImageFolder(str(folder)))
    return ImageSet(_from_files(data.samples, image_size), torch.tensor(data.targets, dtype=torch.int64), len(data.classes))
