"""How close the copy's features are to the target's on held-out images (not only whether a probe does as well)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fidelity(target: torch.Tensor, stolen: torch.Tensor) -> dict[str, float] | None:
    """Mean cosine similarity and mean l2 distance between paired feature vectors (None if the widths differ)."""
    if target.shape != stolen.shape:
        return None
    return {
        "cosine": F.cosine_similarity(target, stolen, dim=1).mean().item(),
        "l2": (target - stolen).norm(dim=1).mean().item(),
        "target_norm": target.norm(dim=1).mean().item(),
    }
