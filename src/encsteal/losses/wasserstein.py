"""Wasserstein-1 distance between an image's stolen and target feature vectors, each read as a distribution
over its D dimensions (a stealing loss in Dziedzic et al. 2022, as their released code computes it):

    p = |t| / Σ_d |t_d|,   q = |s| / Σ_d |s_d|,   P_k = Σ_{d≤k} p_d,   Q_k = Σ_{d≤k} q_d
    L = 1/N Σ_i Σ_k |P_k − Q_k|

the closed form of W₁ between two distributions on the points 1..D. Each image's stolen vector is compared
with its own target vector, but only through the shape of its mass profile: a copy scaled by any c > 0 costs
nothing. The official code divides the features by their sum, which assumes non-negative (post-ReLU)
features; |·| is the same there and keeps the loss defined for signed ones (a copy's linear projection, a
noise defense).
"""

from __future__ import annotations

import torch


def wasserstein(target: torch.Tensor, stolen: torch.Tensor) -> torch.Tensor:
    def cumulative_mass(x: torch.Tensor) -> torch.Tensor:
        mass = x.abs()
        return (mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-12)).cumsum(dim=1)

    return (cumulative_mass(stolen) - cumulative_mass(target)).abs().sum(dim=1).mean()
