"""What every dataset source shares: the ImageSet container, resizing to uint8 N x 3 x S x S, errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from encsteal.errors import EncstealError


class DatasetError(EncstealError):
    """A dataset that cannot be loaded; the message says where it was looked for and what to do."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor
    """uint8, N x 3 x S x S, contiguous."""
    labels: torch.Tensor | None
    """int64, N; None for unlabeled data."""
    num_classes: int | None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> ImageSet:
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index].contiguous(), labels, self.num_classes)


def to_images(array: np.ndarray | torch.Tensor, image_size: int, layout: str = "NHWC", chunk: int = 4096) -> torch.Tensor:
    """uint8 images in any layout (NHW grayscale, NHWC, NCHW; 1, 3 or 4 channels) -> uint8 N x 3 x S x S.

    Resizing is antialiased bilinear straight to S x S (the paper resizes every image to 32x32)."""
    images = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array))  # a copy: IDX buffers are read-only
    if images.ndim == 3:  # N x H x W grayscale
        images = images.unsqueeze(1)
    elif layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] == 4:  # drop alpha
        images = images[:, :3]
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise DatasetError(f"images with {images.shape[1]} channels cannot be turned into RGB")
    if tuple(images.shape[2:]) == (image_size, image_size):
        return images.to(torch.uint8).contiguous()
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk].float()
        resized = F.interpolate(batch, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out
