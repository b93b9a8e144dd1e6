"""Barlow Twins as Dziedzic et al.'s released code applies it to stealing, for comparison with `barlow`.

The batch of N images is cut into halves a and b (the first and the last ⌊N/2⌋ images), each half's stolen
features stacked on its target features, and Barlow Twins (see barlow_twins.py) taken between the stacks:

    P = [s_a; t_a],   Q = [s_b; t_b],   L = barlow_twins(P, Q)

Row k of P and row k of Q come from two different images, and no row ever holds an image's stolen vector
beside its own target vector: L is zero whenever the stacked halves are standardised and decorrelated, however
far the copy is from the target (a sign-flipped copy scores as well as an exact one). `barlow` pairs each
image's stolen and target features instead.
"""

from __future__ import annotations

import torch

from encsteal.losses.barlow_twins import barlow_twins

MIN_BATCH = 4
"""Two halves of at least two images: a half of one has no spread to standardise."""


def barlow_halves(target: torch.Tensor, stolen: torch.Tensor) -> torch.Tensor:
    if len(stolen) < MIN_BATCH:
        raise ValueError(f"barlow-halves needs at least {MIN_BATCH} images per batch, got {len(stolen)}")
    half = len(stolen) // 2
    first = torch.cat([stolen[:half], target[:half]])
    second = torch.cat([stolen[half : 2 * half], target[half : 2 * half]])
    return barlow_twins(second, first)
