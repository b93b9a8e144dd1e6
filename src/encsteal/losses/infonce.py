"""InfoNCE with the target's features as keys (van den Oord et al. 2018; a stealing loss in Dziedzic et al. 2022):

    L = −1/N Σ_i log  exp(sim(s_i, t_i)/τ) / Σ_j exp(sim(s_i, t_j)/τ)

s_i = f_s(x_i), t_i = f_t(x_i), sim the cosine similarity: each stolen vector must pick its own image's
target vector among the batch's. Dziedzic et al. use τ = 0.07; their code takes the 2N-way form, where the
target vectors are anchors too and the other stolen vectors are negatives as well: that is `nt-xent` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(target: torch.Tensor, stolen: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    logits = F.normalize(stolen, dim=1) @ F.normalize(target, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(stolen), device=stolen.device))
