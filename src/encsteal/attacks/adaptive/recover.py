"""Recovering clean features from perturbed ones.

BESA (2025) recovers the target's clean features from a defense's perturbed answers with a learned generator.
Learning one needs a shadow of the defense; this attacker uses what any noisy answer gives away without one: an
encoder's features fill a few directions, and noise drawn per image fills all of them alike. On the n × D answers
F, centred by their mean μ, with eigenvalues λ_k and directions v_k of their covariance, the noise floor ν is
estimated as the median λ_k (the signal fills fewer than half the directions), and every direction is kept in
the share of it that stands above the floor (a Wiener shrinkage; Marchenko-Pastur's edge ν(1 + √(D/n))² marks the
directions that are noise alone):

    F̂ = μ + Σ_k w_k (F − μ) v_k v_kᵀ,   w_k = max(0, λ_k − ν) / λ_k  for λ_k above the edge, else 0

Fitted once, on the first answers the attack asks for (all its images), and applied to every later answer.
Against a deterministic defense (top-k, rounding) it removes what little spreads like noise; it is meant for the
noise of `noise` and B4B.
"""

from __future__ import annotations

import torch

from encsteal.target import Target, answered


def fit_recovery(answers: torch.Tensor):
    """The projection F -> F̂ fitted on `answers` (n × D)."""
    answers = answers.double()
    n, dim = answers.shape
    mean = answers.mean(dim=0)
    eigenvalues, vectors = torch.linalg.eigh(torch.cov((answers - mean).T))
    floor = float(eigenvalues.median().clamp_min(0))
    edge = floor * (1 + (dim / max(n, 1)) ** 0.5) ** 2
    weights = torch.where(eigenvalues > edge, (eigenvalues - floor).clamp_min(0) / eigenvalues.clamp_min(1e-12),
                          torch.zeros_like(eigenvalues))
    projection = (vectors * weights) @ vectors.T

    def recover(features: torch.Tensor) -> torch.Tensor:
        return ((features.double() - mean) @ projection + mean).to(features.dtype)

    return recover


class RecoveringTarget:
    """Answers passed through a recovery fitted on the first call's answers (those it has: a refused image's row
    of NaN stays NaN)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.recover = None

    @property
    def queries(self) -> int:
        return self.target.queries

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        answers = self.target.embed(images)
        if self.recover is None:
            kept = answers[answered(answers)]
            if len(kept) < 2:
                return answers
            self.recover = fit_recovery(kept)
        return self.recover(answers)
