"""Batched, per-sample augmentations on float image tensors in [0, 1] (kornia), one place for all of them.

Names, parameters and their numbers in StolenEncoder Table VIII (the SimCLR set):

    1 random_resized_crop   scale (0.2, 1.0), back to image_size x image_size
    2 horizontal_flip       p 0.5
    3 color_jitter          brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1, p 0.8 (kornia ColorJitter)
    4 grayscale             p 0.2

A pipeline applies its operations in this canonical order, whatever order they are listed in. Each image of
a batch draws its own parameters from torch's global generator, so ``torch.manual_seed`` reproduces them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as K
import torch
from torch import nn

AUGMENTATIONS: dict[str, Callable[[int], nn.Module]] = {
    "random_resized_crop": lambda size: K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
    "horizontal_flip": lambda size: K.RandomHorizontalFlip(p=0.5),
    "color_jitter": lambda size: K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
    "grayscale": lambda size: K.RandomGrayscale(p=0.2),
}
"""name -> factory(image_size), in canonical order."""

BY_NUMBER: dict[str, str] = dict(zip("1234", AUGMENTATIONS))
"""Table VIII's digits -> names."""


def _known() -> str:
    return ", ".join(f"{digit}={name}" for digit, name in BY_NUMBER.items())


def parse_augment(spec: str | Sequence[str]) -> list[str]:
    """Names, in canonical order, from Table VIII's digits ("1234", "23"; "none" or "" for none), from a
    comma-separated string of names, or from a list of names. Unknown names or digits raise ValueError."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "none"):
            return []
        if text.isdigit():
            if not set(text) <= set(BY_NUMBER):
                raise ValueError(f"augmentation digits '{spec}' must be made of 1-4 ({_known()})")
            return [BY_NUMBER[digit] for digit in sorted(set(text))]
        spec = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in spec if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(AUGMENTATIONS)}; or Table VIII digits {_known()})")
    return [name for name in AUGMENTATIONS if name in spec]


class Augmentation(nn.Sequential):
    """The kornia operations in canonical order; checks its input is an N x C x H x W float batch."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not images.is_floating_point():
            raise TypeError(f"augmentations expect float images in [0, 1], got {images.dtype}; "
                            "convert uint8 batches with images.float() / 255")
        if images.dim() != 4:
            raise ValueError(f"augmentations expect an N x C x H x W batch, got shape {tuple(images.shape)}")
        return super().forward(images)


def build_augmentation(names: Sequence[str], image_size: int) -> nn.Module:
    """The pipeline for `names` (or a digits/comma string, see parse_augment) producing image_size x image_size
    images; no names gives nn.Identity. Output: same shape (with crop: N x C x image_size x image_size), dtype
    and device as the input, values in [0, 1]."""
    ops = [AUGMENTATIONS[name](image_size) for name in parse_augment(names)]
    return Augmentation(*ops) if ops else nn.Identity()


__all__ = ["AUGMENTATIONS", "BY_NUMBER", "Augmentation", "build_augmentation", "parse_augment"]
