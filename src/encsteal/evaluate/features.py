"""Feature extraction, once per encoder and dataset: every probe then trains on the cached features."""

from __future__ import annotations

from collections.abc import Callable

import torch

from encsteal.progress import progress_bar

Embed = Callable[[torch.Tensor], torch.Tensor]
"""uint8 images N x 3 x H x W -> float features N x D (a Target's embed, or an encoder wrapped as one)."""


def extract_features(embed: Embed, images: torch.Tensor, batch_size: int, description: str, progress: bool = True) -> torch.Tensor:
    chunks = []
    with progress_bar(len(images), description, enabled=progress) as advance:
        for chunk in images.split(batch_size):
            chunks.append(embed(chunk))
            advance(len(chunk))
    features = torch.cat(chunks).float()
    if not torch.isfinite(features).all():
        raise ValueError(f"{description}: the encoder produced NaN or infinite features")
    return features
