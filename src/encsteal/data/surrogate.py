"""The images a run trains on: the provider's pre-training set and the attacker's surrogate set.

Both are seeded random draws, so a checkpoint's recorded (dataset, split, limit, seed) names its exact
images. The surrogate follows the paper's three scenarios (StolenEncoder §III, Table IV): a subset of the
pre-training images, the same distribution but disjoint (another split of the same dataset), or a
different distribution (another dataset).
"""

from __future__ import annotations

from pathlib import Path

import torch

from encsteal.config import SurrogateConfig
from encsteal.data import load_dataset
from encsteal.errors import ConfigError


def draw(count: int, available: int, seed: int) -> torch.Tensor:
    """`count` distinct indices out of `available`, seeded."""
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count]


def pretraining_indices(available: int, limit: int | None, seed: int) -> torch.Tensor:
    """Which images of the split the provider pre-trains on: all, or a seeded subset of `limit`."""
    if limit is None or limit >= available:
        return torch.arange(available)
    return draw(limit, available, seed)


def pretraining_images(dataset: str, split: str, limit: int | None, seed: int, *, root: Path, image_size: int) -> torch.Tensor:
    """The provider's pre-training images."""
    images = load_dataset(dataset, split, root=root, image_size=image_size).images
    return images[pretraining_indices(len(images), limit, seed)]


def surrogate_images(
    config: SurrogateConfig, pretraining: dict | None, seed: int, *, root: Path, image_size: int,
    queries_per_image: int = 1,
) -> tuple[torch.Tensor, dict]:
    """The attacker's pool of unlabeled images and a record of where they came from, including their indices in
    their dataset split (so that evaluation can keep them out of a downstream test set).

    The query budget (surrogate.size) buys the features of budget // queries_per_image images (an attack may buy
    several features per image); the pool holds those and surrogate.pool - those more (none by default). The pool
    is a seeded random draw, so its first images are a random choice of them, and a larger budget's draw holds a
    smaller one's. Record: scenario, dataset, split, count (the pool's size), indices, budget, images (to buy).

    `pretraining` describes the target's pre-training data as its checkpoint records it:
    {"dataset", "split", "limit", "seed", "count"}; None when the attacker knows nothing of it (a remote API
    without a checkpoint), which only the different-distribution scenario with numbers of images allows."""
    fixed = isinstance(config.size, int) and (config.pool is None or isinstance(config.pool, int))
    if pretraining is None and (config.scenario != "different-distribution" or not fixed):
        raise ConfigError(
            "without the target's checkpoint its pre-training data is unknown: use surrogate.scenario="
            "different-distribution with surrogate.dataset and numbers of images as surrogate.size and surrogate.pool"
        )
    pretrain_size = pretraining["count"] if pretraining else 0
    budget = config.count(pretrain_size)
    images = budget // queries_per_image
    if images < 1:
        raise ConfigError(f"surrogate.size buys {budget} queries, fewer than the {queries_per_image} features the "
                          "attack buys per image: raise surrogate.size or buy fewer views per image")
    count = config.pool_count(pretrain_size, images)
    if count < images:
        raise ConfigError(f"surrogate.pool holds {count} images, fewer than the {images} the budget buys: raise "
                          "surrogate.pool or leave it out")
    if config.scenario == "subset":
        dataset, split = pretraining["dataset"], pretraining["split"]
        if config.split not in (None, split):
            raise ConfigError(f"surrogate.split: a subset of the pre-training set comes from split '{split}'")
        full = load_dataset(dataset, split, root=root, image_size=image_size).images
        pool_indices = pretraining_indices(len(full), pretraining["limit"], pretraining["seed"])
    elif config.scenario == "same-distribution":
        dataset, split = pretraining["dataset"], config.split or "test"
        if split == pretraining["split"]:
            raise ConfigError(
                f"surrogate.split: 'same-distribution' must be disjoint from the pre-training split '{split}'; "
                "use another split (e.g. test) or scenario=subset"
            )
        full = load_dataset(dataset, split, root=root, image_size=image_size).images
        pool_indices = torch.arange(len(full))
    else:
        dataset, split = config.dataset, config.split or "train"
        full = load_dataset(dataset, split, root=root, image_size=image_size).images
        pool_indices = torch.arange(len(full))
    if count > len(pool_indices):
        what = "surrogate.size asks for" if config.pool is None else "surrogate.pool asks for"
        raise ConfigError(
            f"{what} {count} images but {dataset}/{split} has only {len(pool_indices)}; lower it"
        )
    indices = pool_indices[draw(count, len(pool_indices), seed + 1)]
    record = {"scenario": config.scenario, "dataset": dataset, "split": split, "count": count, "indices": indices.tolist(),
              "budget": budget, "images": images}
    pool = full[indices]
    return (gray(pool) if config.grayscale else pool), record


LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601's weights of R, G and B, as torchvision's and PIL's grayscale conversions use."""


def gray(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> the same images in gray: each pixel's luma in all three channels."""
    luma = sum(weight * images[:, channel].float() for channel, weight in enumerate(LUMA))
    return luma.round().clamp(0, 255).to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
