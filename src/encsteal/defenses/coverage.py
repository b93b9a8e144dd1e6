"""How much of the embedding space an account has covered: B4B's locality-sensitive hashing buckets.

B4B (Dubiński et al., "Bucks for Buckets (B4B): Active Defenses Against Stealing Encoders", NeurIPS 2023;
official code stapaw/b4b-active-encoder-defense, end2end-stealing/buckets.py) hashes every returned feature
vector with P random projections of b hyperplanes each, h_p(f) = [f·w_p1 > 0, ..., f·w_pb > 0], and measures an
account's coverage as the mean share of the 2^b buckets its answers fell into:

    coverage = 100 · (1/P) Σ_p |{h_p(f) : f answered to the account}| / 2^b      (%; B4B: b = 12, P = 20)

Legitimate users, who embed the data of one downstream task, stay in a small part of the space; an attacker
who wants the whole encoder covers much more of it. The hyperplanes come from the provider's secret (an
attacker who knew them could choose queries that fall into few buckets).

Features of ReLU encoders are all >= 0, so hyperplanes through the origin cut through them poorly (the demo's
Fashion-MNIST features cover 3.6 % of the buckets after 3,000 queries). `center` moves the origin to the mean
feature of the provider's pre-training data, as the provider can compute it once (14 % after 3,000 queries:
finer steps to calibrate with); B4B itself hashes through the origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from encsteal.defenses.accounts import account_key
from encsteal.defenses.settings import DefenseSettings

PRETRAINING = "pretraining"
"""`center: pretraining`: the provider computes the mean feature of its pre-training images when it starts."""


class CoverageSettings(DefenseSettings):
    bits: int = Field(12, ge=1, le=20)
    """Hyperplanes per projection (2^bits buckets each; B4B: 12)."""
    projections: int = Field(20, ge=1, le=64)
    """Independent projections averaged (B4B: 20)."""
    center: Path | Literal["pretraining"] | None = None
    """A .npy file holding the mean feature vector the hyperplanes pass through; `pretraining` to compute it from
    the target's pre-training images; None: through the origin (as B4B)."""
    secret: int = Field(0, ge=-(2**63), lt=2**63)
    """The provider's seed of the hyperplanes (and of the defense's other draws): keep it private, and draw a
    random 63-bit one in a deployment (`python -c "import secrets; print(secrets.randbits(63))"`). Reports show
    it as ***."""


class Coverage:
    """The buckets of one kind of hashing; an account's state is a bitmap of the buckets it has hit."""

    def __init__(self, settings: CoverageSettings, dim: int | None = None) -> None:
        self.bits, self.projections, self.secret = settings.bits, settings.projections, settings.secret
        self.center = None
        if settings.center == PRETRAINING:
            raise ValueError("the defense's center is still `pretraining`: the provider computes it before serving")
        if settings.center is not None:
            self.center = torch.from_numpy(np.load(settings.center, allow_pickle=False).astype(np.float32))
        self.planes: torch.Tensor | None = None
        if dim is not None:
            self._planes(dim)

    def _planes(self, dim: int) -> torch.Tensor:
        if self.planes is None or self.planes.shape[1] != dim:
            generator = torch.Generator().manual_seed(account_key(self.secret, "", "hyperplanes"))
            self.planes = torch.randn(self.projections, dim, self.bits, generator=generator)
        return self.planes

    def empty(self) -> np.ndarray:
        return np.zeros((self.projections, 2**self.bits), dtype=bool)

    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """The bucket of every vector under every projection: long P x N."""
        features = features.detach().float().cpu()
        if self.center is not None:
            if self.center.shape != features.shape[1:]:
                raise ValueError(f"the coverage center has {self.center.numel()} dimensions, the features "
                                 f"{features.shape[1]}: it belongs to another encoder")
            features = features - self.center
        above = torch.einsum("nd,pdb->pnb", features, self._planes(features.shape[1])) > 0
        return (above.long() << torch.arange(self.bits)).sum(dim=2)

    def hit(self, buckets: np.ndarray, features: torch.Tensor) -> np.ndarray:
        """The bitmap with the buckets of `features` added."""
        buckets = buckets.copy()
        codes = self.codes(features).numpy()
        for projection in range(self.projections):
            buckets[projection, codes[projection]] = True
        return buckets

    @staticmethod
    def percent(buckets: np.ndarray) -> float:
        return float(100.0 * buckets.mean())

    def packed(self, buckets: np.ndarray) -> np.ndarray:
        return np.packbits(buckets, axis=1)

    def unpacked(self, packed: np.ndarray | None) -> np.ndarray:
        if packed is None or packed.shape != (self.projections, 2**self.bits // 8 or 1):
            return self.empty()  # a new account, or a state of other settings: count afresh
        return np.unpackbits(packed, axis=1, count=2**self.bits).astype(bool)


def feature_mean(embed, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The mean feature vector of `images` under `embed` (uint8 N x 3 x H x W -> float N x D)."""
    total = None
    for chunk in images.split(batch_size):
        part = embed(chunk).double().sum(dim=0)
        total = part if total is None else total + part
    return (total / len(images)).float().numpy()
