"""Datasets as uint8 tensors N x 3 x S x S: name -> (splits, loader(split, root, image_size)).

Besides the names in DATASETS, `folder:PATH` names any folder of PNG/JPEG images (encsteal.data.folder), its
path relative to the data root unless absolute: the images a user brings.

Every loaded set is memoised in-process, so the pre-training and downstream stages of one run decode a
dataset once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from encsteal.data import folder, offline, torchvision_sets
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
    "stamps": DatasetSource(("train", "test"), offline.stamps),
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


FOLDER = DatasetSource(folder.SPLITS, folder.load_folder)
"""What a `folder:PATH` name reads (its loader takes the folder in place of the data root)."""


def dataset_source(name: str) -> DatasetSource:
    """The source of a registered name or of a `folder:PATH` name; DatasetError for any other."""
    if folder.is_folder_name(name):
        if not name.removeprefix(folder.PREFIX).strip():
            raise DatasetError("a folder dataset is named folder:PATH, with the folder's path after the colon")
        return FOLDER
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)}, or folder:PATH for a folder of "
                           "PNG/JPEG images)")
    return DATASETS[name]


def load_dataset(name: str, split: str, *, root: Path, image_size: int) -> ImageSet:
    source = dataset_source(name)
    if split not in source.splits:
        raise DatasetError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(source.splits)})")
    if folder.is_folder_name(name):
        root = folder.folder_of(name, root)
    return _load(name, split, Path(root).resolve(), image_size)


@lru_cache(maxsize=16)
def _load(name: str, split: str, root: Path, image_size: int) -> ImageSet:
    return dataset_source(name).load(split, root, image_size)


__all__ = ["DATASETS", "DatasetError", "DatasetSource", "ImageSet", "dataset_source", "load_dataset", "to_images"]
