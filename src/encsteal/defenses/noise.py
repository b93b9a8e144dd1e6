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
    secret: int = 0
    """The provider's seed; keep it private in a deployment."""


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
