"""Distances between target and stolen feature vectors (StolenEncoder §IV-B, Table VI).

StolenEncoder minimises  L = L1 + λ·L2  with
    L1 = 1/|D| Σ_x d(f_t(x), f_s(x))            (Eq. 3)
    L2 = 1/|D| Σ_x d(f_t(x), f_s(A(x)))         (Eq. 6)
where d is one of the distances below, averaged over the batch (a mean, not the official code's sum, so the
step size does not grow with the batch size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_distance(target: torch.Tensor, stolen: torch.Tensor) -> torch.Tensor:
    """d(u, v) = ‖u − v‖₂, the Euclidean distance, averaged over the batch (the paper's default)."""
    return (target - stolen).norm(p=2, dim=1).mean()


def l1_distance(target: torch.Tensor, stolen: torch.Tensor) -> torch.Tensor:
    """d(u, v) = ‖u − v‖₁ = Σ_i |u_i − v_i|, averaged over the batch."""
    return (target - stolen).abs().sum(dim=1).mean()


def cosine_distance(target: torch.Tensor, stolen: torch.Tensor) -> torch.Tensor:
    """d(u, v) = −cos(u, v) = −u·v / (‖u‖‖v‖), in [−1, 1], averaged over the batch (the paper's "minus cosine")."""
    return -F.cosine_similarity(target, stolen, dim=1).mean()


DISTANCES = {
    "l2": l2_distance,
    "l1": l1_distance,
    "cosine": cosine_distance,
}
