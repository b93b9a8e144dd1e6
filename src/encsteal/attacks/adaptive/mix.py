"""Mixing benign-looking cover queries into every request.

PRADA (encsteal.defenses.detection) flags an account whose queries' distances to its earlier queries stop looking
normally distributed: crafted streams (near-duplicates, augmented views of the same images) put much of their mass
near 0. The adaptive attacker hides such a stream among natural images: every request carries round(mix · n)
cover images (a seeded draw of `cover`, never the same twice while it lasts) beside its n attack images. The
cover's answers are thrown away and its queries paid; each account's stream holds the cover (below the cache).
"""

from __future__ import annotations

import math

import torch

from encsteal.target import Target


class CoverTarget:
    """A target whose every request is padded with cover images in the ratio `mix` (answers discarded)."""

    def __init__(self, target: Target, cover: torch.Tensor, mix: float, seed: int = 0) -> None:
        if len(cover) == 0:
            raise ValueError("no cover images to mix in")
        self.target, self.mix = target, mix
        self.cover = cover[torch.randperm(len(cover), generator=torch.Generator().manual_seed(seed + 5))]
        self.next = 0
        self.extra_queries = 0
        """Cover images sent."""

    @property
    def queries(self) -> int:
        return self.target.queries

    def _cover(self, count: int) -> torch.Tensor:
        picked = torch.arange(self.next, self.next + count) % len(self.cover)
        self.next += count
        return self.cover[picked]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        count = math.ceil(self.mix * len(images))
        if count == 0:
            return self.target.embed(images)
        # the attack images spread among the cover, so the provider sees no block of either
        batch = torch.cat([images, self._cover(count)])
        order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(self.next))
        answers = self.target.embed(batch[order])
        self.extra_queries += count
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order))
        return answers[back[: len(images)]]
