"""Top-k features (StolenEncoder §VII-A): keep the k features of largest absolute value, reset the rest to 0."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from encsteal.defenses.settings import DefenseSettings


class TopKConfig(DefenseSettings):
    name: Literal["top-k"] = "top-k"
    k: int = Field(ge=1)
    """Features kept per vector; k at or above the feature dimension returns the vectors unchanged."""


def top_k(config: TopKConfig, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    if config.k >= features.shape[1]:
        return features
    keep = features.abs().topk(config.k, dim=1).indices
    return torch.zeros_like(features).scatter_(1, keep, features.gather(1, keep))
