"""Losses, one per file, each docstring giving its equation.

`STEALING_LOSSES` are the interchangeable objectives of an attack: d in StolenEncoder's L = L1 + λ·L2 is any
of them (`attack.loss`). Each takes (target features, stolen features) of a batch, row i of both from
the same image; the contrastive ones use the batch's other images as negatives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from encsteal.losses.barlow_halves import MIN_BATCH as BARLOW_HALVES_MIN_BATCH
from encsteal.losses.barlow_halves import barlow_halves
from encsteal.losses.barlow_twins import barlow_twins
from encsteal.losses.distance import DISTANCES, cosine_distance, l1_distance, l2_distance
from encsteal.losses.infonce import infonce
from encsteal.losses.mse import mse
from encsteal.losses.multi_crop_nt_xent import multi_crop_nt_xent
from encsteal.losses.multi_relational import multi_relational
from encsteal.losses.nt_xent import nt_xent
from encsteal.losses.soft_nn import soft_nn
from encsteal.losses.supcon import supcon
from encsteal.losses.wasserstein import wasserstein

STEALING_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l2": l2_distance,
    "l1": l1_distance,
    "cosine": cosine_distance,
    "mse": mse,
    "infonce": infonce,
    "nt-xent": nt_xent,
    "soft-nn": soft_nn,
    "supcon": supcon,
    "wasserstein": wasserstein,
    "barlow": barlow_twins,
    "barlow-halves": barlow_halves,
}
"""name -> loss(target, stolen[, labels][, temperature])."""

TEMPERATURE_LOSSES = {"infonce", "nt-xent", "soft-nn", "supcon"}
"""Losses that take attack.temperature."""
LABELLED_LOSSES = {"supcon"}
"""Losses that need the surrogate images' labels."""
MIN_BATCH_SIZES = {"barlow-halves": BARLOW_HALVES_MIN_BATCH}
"""Losses that need more than the two images per batch every loss needs."""

StealingLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def stealing_loss(name: str, temperature: float) -> StealingLoss:
    """The loss `name` as loss(target, stolen, labels) with its temperature bound; labels are used by supcon only."""
    function = STEALING_LOSSES[name]
    if name in LABELLED_LOSSES:
        def labelled(target: torch.Tensor, stolen: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            if labels is None:
                raise ValueError(f"loss '{name}' needs the surrogate images' labels, and this surrogate set has none")
            return function(target, stolen, labels, temperature=temperature)
        return labelled
    if name in TEMPERATURE_LOSSES:
        return lambda target, stolen, labels=None: function(target, stolen, temperature=temperature)
    return lambda target, stolen, labels=None: function(target, stolen)


__all__ = ["DISTANCES", "LABELLED_LOSSES", "MIN_BATCH_SIZES", "STEALING_LOSSES", "TEMPERATURE_LOSSES",
           "barlow_halves", "barlow_twins", "cosine_distance", "infonce", "l1_distance", "l2_distance", "mse",
           "multi_crop_nt_xent", "multi_relational", "nt_xent", "soft_nn", "stealing_loss", "supcon", "wasserstein"]
