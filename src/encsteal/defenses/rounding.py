"""Feature rounding (StolenEncoder §VII-B): every feature rounded to m decimals (0.0123 -> 0.01 for m = 2)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from encsteal.defenses.settings import DefenseSettings


class RoundingConfig(DefenseSettings):
    name: Literal["rounding"] = "rounding"
    decimals: int = Field(ge=0)


def rounding(config: RoundingConfig, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return torch.round(features, decimals=config.decimals)
