"""The attacker's only view of the victim: `Target.embed(images) -> features`.

An attack receives a Target and nothing else, so it runs unchanged against an encoder in this process
(`LocalTarget`) or a remote embedding API. Query accounting lives here, not in attacks: every target counts
the images it embedded in `queries`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from encsteal.defenses import DefendedEncoder, Defense
from encsteal.errors import EncstealError
from encsteal.models import Encoder
from encsteal.training import channels_last, to_float_batch


class QueryError(EncstealError, ValueError):
    """A query the target cannot answer (wrong dtype, shape or size)."""


@runtime_checkable
class Target(Protocol):
    queries: int
    """Images embedded so far (each one a paid query on a real API)."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images N x 3 x H x W -> float32 features N x D (on the CPU)."""
        ...


def check_images(images: torch.Tensor, image_size: int | None = None) -> None:
    """Raise QueryError unless `images` is a non-empty uint8 batch N x 3 x H x W of the expected size."""
    if not isinstance(images, torch.Tensor):
        raise QueryError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise QueryError(f"images must be uint8 (0-255), got {images.dtype}; convert with (x * 255).round().to(torch.uint8)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise QueryError(f"images must have shape N x 3 x H x W, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise QueryError("an empty batch of images cannot be embedded")
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        raise QueryError(
            f"this encoder takes {image_size}x{image_size} images, got {images.shape[2]}x{images.shape[3]}; "
            f"resize them first (data.image_size={image_size})"
        )


class LocalTarget:
    """An encoder in this process behind the Target interface, with the provider's defenses (if any) applied
    to every answer exactly as the served API applies them."""

    def __init__(self, encoder: Encoder, *, image_size: int, device: torch.device, batch_size: int = 256,
                 defenses: Sequence[Defense] = ()) -> None:
        self.encoder = encoder.to(device).to(memory_format=torch.channels_last).eval()
        self.model = DefendedEncoder(self.encoder, defenses)
        self.image_size = image_size
        self.device = device
        self.batch_size = batch_size
        self.feature_dim = encoder.feature_dim
        self.queries = 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.image_size)
        with torch.inference_mode():
            features = [
                self.model(channels_last(to_float_batch(chunk, self.device))).float().cpu()
                for chunk in images.split(self.batch_size)
            ]
        self.queries += len(images)
        return torch.cat(features)
