"""Feature rounding (StolenEncoder §VII-B): every feature rounded to m decimals (0.0123 -> 0.01 for m = 2)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


class RoundingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["rounding"] = "rounding"
    decimals: int = Field(ge=0)


class Rounding:
    def __init__(self, config: RoundingConfig) -> None:
        self.decimals = config.decimals

    def __call__(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.round(features, decimals=self.decimals)
