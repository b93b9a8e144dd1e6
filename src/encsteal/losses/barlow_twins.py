"""Barlow Twins between stolen and target features (Zbontar et al. 2021; a stealing loss in Dziedzic et al. 2022):

    C_ij = Σ_b ŝ_bi t̂_bj / N     (ŝ, t̂: features standardised over the batch)
    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²,   λ = 5·10⁻³

Zero when every stolen dimension is perfectly correlated with the same target dimension and uncorrelated
with the others; it asks for correlation, not equality. (The slides' Barlow, their worst stealing loss,
pairs the features differently: see barlow_halves.py.)
"""

from __future__ import annotations

import torch


def barlow_twins(target: torch.Tensor, stolen: torch.Tensor, off_diagonal_weight: float = 5e-3) -> torch.Tensor:
    n = len(stolen)

    def standardise(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=0)) / x.std(dim=0, unbiased=False).clamp_min(1e-6)

    c = standardise(stolen).T @ standardise(target) / n
    diagonal = torch.diagonal(c)
    return (1 - diagonal).pow(2).sum() + off_diagonal_weight * (c.pow(2).sum() - diagonal.pow(2).sum())
