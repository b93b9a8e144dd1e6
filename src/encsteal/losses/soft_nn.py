"""Soft nearest-neighbour loss (Frosst et al. 2019; a stealing loss in Dziedzic et al. 2022).

Over the 2N L2-normalised vectors z = {s_1..s_N, t_1..t_N}, where s_i and t_i (the stolen and target features
of image i) share the label i:

    L = −1/(2N) Σ_k log  Σ_{j≠k, y_j=y_k} exp(−‖z_k − z_j‖²/τ) / Σ_{j≠k} exp(−‖z_k − z_j‖²/τ)

Small when every vector's nearest neighbours are the other view of its own image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_nn(target: torch.Tensor, stolen: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    n = len(stolen)
    z = F.normalize(torch.cat([stolen, target]), dim=1)
    logits = -torch.cdist(z, z).pow(2) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.arange(n, device=z.device).repeat(2)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    positive = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()
