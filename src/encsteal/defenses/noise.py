"""Gaussian noise on the returned features (Dziedzic et al., ICML 2022):

    f(x) + σ · rms(f(x)) · ε,   ε ~ N(0, I),   rms(v) = ‖v‖₂ / √D

σ is relative to each vector's root-mean-square, so σ = 0.1 is 10 % noise whatever the encoder's scale.
The noise is drawn from a generator seeded by the image's pixels and the provider's secret: the same image
always gets the same noise, so an attacker cannot average it away by asking twice, and the in-process and
served encoders answer alike.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from encsteal.defenses.seeding import image_seeds
from encsteal.defenses.settings import DefenseSettings


class NoiseConfig(DefenseSettings):
    name: Literal["noise"] = "noise"
    sigma: float = Field(gt=0)
    secret: int = Field(0, ge=-(2**63), lt=2**63)
    """The provider's seed of the per-image draws: keep it private, and draw a random 63-bit one in a deployment
    (`python -c "import secrets; print(secrets.randbits(63))"`). Reports show it as ***."""


class GaussianNoise:
    def __init__(self, config: NoiseConfig) -> None:
        self.sigma = config.sigma
        self.secret = config.secret

    def __call__(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        dim = features.shape[1]
        noise = torch.stack([
            torch.randn(dim, generator=torch.Generator().manual_seed(seed))
            for seed in image_seeds(images, self.secret)
        ]).to(features.device, features.dtype)
        rms = features.norm(dim=1, keepdim=True) / dim**0.5
        return features + self.sigma * rms * noise
