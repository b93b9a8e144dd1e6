"""Top-k features (StolenEncoder §VII-A): keep the k features of largest absolute value, reset the rest to 0."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


class TopKConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["top-k"] = "top-k"
    k: int = Field(ge=1)
    """Features kept per vector; k at or above the feature dimension returns the vectors unchanged."""


class TopK:
    def __init__(self, config: TopKConfig) -> None:
        self.k = config.k

    def __call__(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.k >= features.shape[1]:
            return features
        keep = features.abs().topk(self.k, dim=1).indices
        return torch.zeros_like(features).scatter_(1, keep, features.gather(1, keep))
