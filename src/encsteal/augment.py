"""Batched, per-sample augmentations on float image tensors in [0, 1] (kornia), one place for all of them.

Names and their numbers in StolenEncoder Table VIII: 1 random_resized_crop, 2 horizontal_flip,
3 color_jitter, 4 grayscale — the SimCLR set. Each image of a batch draws its own parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as K
from torch import nn

AUGMENTATIONS: dict[str, Callable[[int], nn.Module]] = {
    "random_resized_crop": lambda size: K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
    "horizontal_flip": lambda size: K.RandomHorizontalFlip(p=0.5),
    "color_jitter": lambda size: K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
    "grayscale": lambda size: K.RandomGrayscale(p=0.2),
}
"""In canonical order: a pipeline applies its operations in this order, whatever order they are listed in."""

BY_NUMBER = dict(zip("1234", AUGMENTATIONS))


def parse_augment(spec: str | Sequence[str]) -> list[str]:
    """Names from a list of names or from Table VIII's digits ("1234", "23"; "none" or "" for no augmentation)."""
    if isinstance(spec, str):
        if spec.strip().lower() in ("", "none"):
            return []
        if not set(spec) <= set(BY_NUMBER):
            raise ValueError(f"augmentation digits '{spec}' must be made of 1-4 ({', '.join(f'{k}={v}' for k, v in BY_NUMBER.items())})")
        return [BY_NUMBER[digit] for digit in sorted(set(spec))]
    unknown = [name for name in spec if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))} (known: {', '.join(AUGMENTATIONS)})")
    return [name for name in AUGMENTATIONS if name in spec]


def build_augmentation(names: Sequence[str], image_size: int) -> nn.Module:
    """The pipeline for `names` at `image_size`; no names gives the identity."""
    ops = [AUGMENTATIONS[name](image_size) for name in parse_augment(list(names))]
    return nn.Sequential(*ops) if ops else nn.Identity()
