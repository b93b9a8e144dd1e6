"""B4B, "Bucks for Buckets" (Dubiński, Pawlak, Boenisch, Trzciński, Dziedzic; NeurIPS 2023; official code
stapaw/b4b-active-encoder-defense): noise that grows with the account's coverage of the embedding space, and a
secret transformation per account.

1. Coverage: the share of LSH buckets the account's answers fell into so far (encsteal.defenses.coverage), this
   request's included.
2. Noise calibrated by coverage c (end2end-stealing/steal_model.py, `get_stdev`):

       σ(c) = max(0, λ · (exp(ln(α/λ) · c / β) − 1))

   near 0 while c is small, α at c = β, and growing fast beyond (here up to `max_sigma`, where the answers are
   noise already: B4B's β = 80 keeps it under 22 at c = 100 %, a small β would overflow); B4B's α = 0.8,
   β = 80, λ = 10⁻⁶. Here σ is
   relative to each vector's root-mean-square, as in the `noise` defense (f + σ·rms(f)·ε, ε ~ N(0, I)), so α
   means the same for any encoder's scale; ε is drawn from the provider's secret, the account and the image's
   pixels, so asking an image twice gives the same draw.
3. Per-account transformation (src/transforms/affine.py): scale and shift each dimension (both uniform in
   [−1, 1]), append `pad` dimensions, and shuffle all dimensions, drawn from the secret and the account's
   name: stable for the account, different for every other, so answers of several (sybil) accounts cannot be
   pooled without first learning a map between them. B4B pads with constants fixed per account, which a look
   at the variance strips; here the padded dimensions are draws per image (scaled to the vector's RMS).

A linear or MLP classifier on standardised features does not see an affine map of each dimension nor a
permutation, so a customer's classifier loses nothing to step 3; distances and cosine similarities do change.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from encsteal.defenses.accounts import AccountAware, Answer, account_key, pack, unpack
from encsteal.defenses.coverage import Coverage, CoverageSettings
from encsteal.defenses.seeding import image_seeds


class B4BConfig(CoverageSettings):
    name: Literal["b4b"] = "b4b"
    alpha: float = Field(0.8, gt=0)
    """σ (relative to the vector's RMS) at coverage beta."""
    beta: float = Field(80.0, gt=0, le=100)
    """Coverage (%) at which σ reaches alpha; set it just above what legitimate users cover."""
    lam: float = Field(1e-6, gt=0)
    """λ: the scale of σ at small coverage (σ(c) ≈ λ·(α/λ)^(c/β)); smaller keeps the noise off longer."""
    max_sigma: float = Field(100.0, gt=0)
    """The largest σ (relative to the RMS)."""
    transform: Literal["affine-pad-shuffle", "none"] = "affine-pad-shuffle"
    pad: int = Field(0, ge=0)
    """Dimensions appended to every vector before the shuffle."""


def noise_scale(config: B4BConfig, coverage: float) -> float:
    """σ(c) = max(0, λ·(exp(ln(α/λ)·c/β) − 1)), at most max_sigma."""
    exponent = math.log(config.alpha / config.lam) * coverage / config.beta
    if exponent > math.log(config.max_sigma / config.lam + 1.0):
        return config.max_sigma
    return max(0.0, config.lam * (math.exp(exponent) - 1.0))


class B4B(AccountAware):
    name = "b4b"

    def __init__(self, config: B4BConfig) -> None:
        self.config = config
        self.coverage = Coverage(config)
        self.extra_dims = config.pad if config.transform != "none" else 0

    def transform(self, features: torch.Tensor, images: torch.Tensor, account: str) -> torch.Tensor:
        """The account's affine map, padding and shuffle."""
        dim = features.shape[1]
        generator = torch.Generator().manual_seed(account_key(self.config.secret, account, "b4b-transform"))
        scale = torch.rand(dim, generator=generator) * 2 - 1
        shift = torch.rand(dim, generator=generator) * 2 - 1
        order = torch.randperm(dim + self.config.pad, generator=generator)
        out = features * scale.to(features) + shift.to(features)
        if self.config.pad:
            rms = features.norm(dim=1, keepdim=True) / dim**0.5
            seeds = image_seeds(images, account_key(self.config.secret, account, "b4b-pad"))
            pad = torch.stack([torch.randn(self.config.pad, generator=torch.Generator().manual_seed(seed))
                               for seed in seeds]).to(features)
            out = torch.cat([out, rms * pad], dim=1)
        return out[:, order.to(features.device)]

    def answer(self, images: torch.Tensor, features: torch.Tensor, account: str, state: bytes | None) -> Answer:
        saved = unpack(state) if state else {}
        buckets = self.coverage.hit(self.coverage.unpacked(saved.get("buckets")), features)
        queries = int(saved.get("queries", 0)) + len(features)
        coverage = self.coverage.percent(buckets)
        sigma = noise_scale(self.config, coverage)
        out = features
        if sigma > 0:
            dim = features.shape[1]
            seeds = image_seeds(images, account_key(self.config.secret, account, "b4b-noise"))
            noise = torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
            rms = features.norm(dim=1, keepdim=True) / dim**0.5
            out = features + sigma * rms * noise.to(features)
        if self.config.transform != "none":
            out = self.transform(out, images, account)
        new_state = pack(buckets=self.coverage.packed(buckets), queries=np.array(queries))
        return Answer(out, new_state, {"coverage": coverage, "queries": float(queries), "sigma": sigma})
