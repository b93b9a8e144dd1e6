"""Datasets as uint8 tensors N x 3 x S x S: name -> (splits, loader(split, root, image_size)).

Every loaded set is memoised in-process, so the pre-training and downstream stages of one run decode a
dataset once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from encsteal.data import offline, torchvision_sets
from encsteal.data.common import DatasetError, ImageSet, to_images


@dataclass(frozen=True)
class DatasetSource:
    splits: tuple[str, ...]
    load: Callable[[str, Path, int], ImageSet]


DATASETS: dict[str, DatasetSource] = {
    # offline
    "fashion-mnist": DatasetSource(("train", "test"), offline.fashion_mnist),
    "digits": DatasetSource(("train", "test"), offline.digits),
    "mnist-5k": DatasetSource(("train", "test"), offline.mnist_5k),
    "natural-crops": DatasetSource(("train", "test"), offline.natural_crops),
    # torchvision, from files under the data root
    "mnist": DatasetSource(("train", "test"), torchvision_sets.mnist),
    "cifar10": DatasetSource(("train", "test"), torchvision_sets.cifar10),
    "cifar100": DatasetSource(("train", "test"), torchvision_sets.cifar100),
    "stl10": DatasetSource(("train", "test", "unlabeled", "train+unlabeled"), torchvision_sets.stl10),
    "svhn": DatasetSource(("train", "test", "extra"), torchvision_sets.svhn),
    "gtsrb": DatasetSource(("train", "test"), torchvision_sets.gtsrb),
    "food101": DatasetSource(("train", "test"), torchvision_sets.food101),
    "imagenet": DatasetSource(("train", "val"), torchvision_sets.imagenet),
}


def load_dataset(name: str, split: str, *, root: Path, image_size: int) -> ImageSet:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    if split not in DATASETS[name].splits:
        raise DatasetError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(DATASETS[name].splits)})")
    return _load(name, split, Path(root).resolve(), image_size)


@lru_cache(maxsize=16)
def _load(name: str, split: str, root: Path, image_size: int) -> ImageSet:
    return DATASETS[name].load(split, root, image_size)


__all__ = ["DATASETS", "DatasetError", "DatasetSource", "ImageSet", "load_dataset", "to_images"]
