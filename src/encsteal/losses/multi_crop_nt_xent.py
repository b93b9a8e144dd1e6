"""NT-Xent over more than two views of each image: multi-crop (Caron et al., 2020, SwAV §3.2).

Each image of the batch has two full crops v1, v2 and k small crops s_1 … s_k. Every pair of views that holds
a full crop is a positive pair, scored by NT-Xent ℓ (StolenEncoder Eq. 1: the batch's other images are the
negatives), and the pairs are averaged:
    L = ( ℓ(v1, v2) + Σ_j [ ℓ(v1, s_j) + ℓ(v2, s_j) ] ) / (1 + 2k)
Two small crops are never paired: they may show disjoint parts of an image. With k = 0, L is NT-Xent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from encsteal.losses.nt_xent import nt_xent


def multi_crop_nt_xent(full: Sequence[torch.Tensor], small: Sequence[torch.Tensor], temperature: float = 0.5) -> torch.Tensor:
    """L over the projections of two full crops (`full`, each N x D) and any number of small ones (`small`)."""
    if len(full) != 2:
        raise ValueError(f"multi-crop NT-Xent needs exactly two full crops per image, got {len(full)}")
    first, second = full
    pairs = [(first, second)] + [(view, crop) for crop in small for view in full]
    return torch.stack([nt_xent(a, b, temperature) for a, b in pairs]).mean()
