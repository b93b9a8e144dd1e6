"""The images a run trains on: the provider's pre-training set and the attacker's surrogate set.

Both are seeded random draws, so a checkpoint's recorded (dataset, split, limit, seed) names its exact
images. The surrogate follows the paper's three scenarios (StolenEncoder §III, Table IV): a subset of the
pre-training images, the same distribution but disjoint (another split of the same dataset), or a
different distribution (another dataset).
"""

from __future__ import annotations

from pathlib import Path

import torch

from encsteal.config import ConfigError, SurrogateConfig
from encsteal.data import load_dataset


def draw(count: int, available: int, seed: int) -> torch.Tensor:
    """`count` distinct indices out of `available`, seeded."""
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count]


def pretraining_images(dataset: str, split: str, limit: int | None, seed: int, *, root: Path, image_size: int) -> torch.Tensor:
    """The provider's pre-training images: all of dataset/split, or a seeded subset of `limit` of them."""
    images = load_dataset(dataset, split, root=root, image_size=image_size).images
    if limit is None or limit >= len(images):
        return images
    return images[draw(limit, len(images), seed)]


def surrogate_images(
    config: SurrogateConfig, pretraining: dict, seed: int, *, root: Path, image_size: int
) -> tuple[torch.Tensor, dict]:
    """The attacker's unlabeled images and a record of where they came from.

    `pretraining` describes the target's pre-training data as its checkpoint records it:
    {"dataset", "split", "limit", "seed", "count"}."""
    count = config.count(pretraining["count"])
    if config.scenario == "subset":
        dataset, split = pretraining["dataset"], pretraining["split"]
        if config.split not in (None, split):
            raise ConfigError(f"surrogate.split: a subset of the pre-training set comes from split '{split}'")
        pool = pretraining_images(dataset, split, pretraining["limit"], pretraining["seed"], root=root, image_size=image_size)
    elif config.scenario == "same-distribution":
        dataset, split = pretraining["dataset"], config.split or "test"
        if split == pretraining["split"]:
            raise ConfigError(
                f"surrogate.split: 'same-distribution' must be disjoint from the pre-training split '{split}'; "
                "use another split (e.g. test) or scenario=subset"
            )
        pool = load_dataset(dataset, split, root=root, image_size=image_size).images
    else:
        dataset, split = config.dataset, config.split or "train"
        pool = load_dataset(dataset, split, root=root, image_size=image_size).images
    if count > len(pool):
        raise ConfigError(
            f"surrogate.size asks for {count} images but {dataset}/{split} has only {len(pool)}; lower surrogate.size"
        )
    images = pool[draw(count, len(pool), seed + 1)]
    return images, {"scenario": config.scenario, "dataset": dataset, "split": split, "count": count}
