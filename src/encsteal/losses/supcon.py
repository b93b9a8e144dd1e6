"""Supervised contrastive loss (Khosla et al. 2020; a stealing loss in Dziedzic et al. 2022, with labels).

Over the 2N L2-normalised vectors z = {s_1..s_N, t_1..t_N} (stolen and target features) with labels y (each
image's class, shared by its two vectors), P(k) the other vectors of k's class:

    L = −1/(2N) Σ_k 1/|P(k)| Σ_{p∈P(k)} log  exp(z_k·z_p/τ) / Σ_{j≠k} exp(z_k·z_j/τ)

With all labels distinct P(k) is k's other view only and L is NT-Xent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon(target: torch.Tensor, stolen: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    n = len(stolen)
    if labels.shape != (n,):
        raise ValueError(f"supcon needs one label per image: {n} images, labels of shape {tuple(labels.shape)}")
    z = F.normalize(torch.cat([stolen, target]), dim=1)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    log_prob = (z @ z.T / temperature).masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
    both = labels.to(z.device).repeat(2)
    positives = (both[:, None] == both[None, :]) & ~self_mask
    return -(log_prob.masked_fill(~positives, 0).sum(dim=1) / positives.sum(dim=1)).mean()
