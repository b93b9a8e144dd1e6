"""What an attacker the provider refused trains on: the images it has answers for.

A target that stopped answering half-way (encsteal.query_cache.CachedTarget after a refusal) answers the images it
never bought with rows of NaN (encsteal.target.answered). An attack keeps the images it has answers for and trains
on those, as an attacker cut off half-way trains on what it bought before.
"""

from __future__ import annotations

import torch

from encsteal.defenses.accounts import AccountRefused
from encsteal.target import answered


def keep_answered(features: torch.Tensor, images: torch.Tensor, labels: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The features, images and labels (if any) of the images with an answer; AccountRefused if fewer than two
    have one (nothing to train on)."""
    kept = answered(features)
    if bool(kept.all()):
        return features, images, labels
    if int(kept.sum()) < 2:
        raise AccountRefused(f"the provider refused the attacker when it had answers for {int(kept.sum())} of its "
                             f"{len(images)} images: too few to train on")
    return features[kept], images[kept], None if labels is None else labels[kept]
