"""Sybil accounts aligned on anchors: undoing B4B's per-account transformations.

B4B answers every account in its own feature space, f_a(x) = P_a(s_a ⊙ f(x) + t_a) (a secret scale, shift, padding
and shuffle per account), so that an attacker who splits its budget over sybil accounts and pools their answers
trains on k incompatible targets. The adaptive attacker first asks the same public anchor images X_A through every
account and fits, for every account a, the affine map into the first account's space by ridge least squares

    (W_a, b_a) = argmin ‖[f_a(X_A), 1] [W_a; b_a] − f_1(X_A)‖² + ρ‖W_a‖²

then maps each answer of account a through it. An affine map of each dimension followed by a permutation is undone
exactly with more anchors than dimensions; B4B's noise is small while an account's coverage is (the anchors come
first), so the maps are fitted on clean answers. The anchors cost len(X_A) queries per account.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from encsteal.defenses.accounts import AccountRefused
from encsteal.target import Target, next_live_account

RIDGE = 1e-3
"""ρ relative to the mean squared answer: enough to keep the solve stable with fewer anchors than dimensions."""


def fit_affine(source: torch.Tensor, reference: torch.Tensor, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with source @ W + b ≈ reference, by ridge least squares (the bias not penalised)."""
    source, reference = source.double(), reference.double()
    mean_in, mean_out = source.mean(dim=0), reference.mean(dim=0)
    centred = source - mean_in
    gram = centred.T @ centred
    gram += ridge * float(gram.diagonal().mean().clamp_min(1e-12)) * torch.eye(len(gram), dtype=gram.dtype)
    weights = torch.linalg.solve(gram, centred.T @ (reference - mean_out))
    return weights.float(), (mean_out - mean_in @ weights).float()


class Aligner:
    """The anchors and the first account's answers to them; `fit(account)` asks the anchors through another account
    and returns the map of its answers into the first account's space."""

    def __init__(self, anchors: torch.Tensor) -> None:
        self.anchors = anchors
        self.reference: torch.Tensor | None = None
        self.queries = 0
        """Anchor images sent, through every account."""

    def fit(self, account: Target):
        answers = account.embed(self.anchors)
        self.queries += len(self.anchors)
        if self.reference is None:
            self.reference = answers
            return lambda features: features
        weights, bias = fit_affine(answers, self.reference)
        return lambda features: features @ weights + bias


class AlignedSybils:
    """One attacker behind several accounts, request i to account i mod k as `SybilTarget` (a refused account
    dropped), every account's answers mapped into the first account's space (the maps fitted on the anchors before
    the first request; an account refused while it is asked the anchors is dropped, and the next one is the
    reference)."""

    def __init__(self, accounts: Sequence[Target], anchors: torch.Tensor) -> None:
        if len(accounts) < 2:
            raise ValueError("aligning accounts needs at least two of them")
        self.accounts = list(accounts)
        self.aligner = Aligner(anchors)
        self.maps: list | None = None
        self.requests = 0
        self.refused: dict[int, AccountRefused] = {}

    @property
    def targets(self) -> list[Target]:
        return self.accounts

    @property
    def queries(self) -> int:
        return sum(account.queries for account in self.accounts)

    @property
    def extra_queries(self) -> int:
        return self.aligner.queries

    def _fit(self, index: int):
        try:
            return self.aligner.fit(self.accounts[index])
        except AccountRefused as refusal:
            self.refused[index] = refusal
            return None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.maps is None:
            self.maps = [self._fit(index) for index in range(len(self.accounts))]
        return next_live_account(self, lambda index: self.maps[index](self.accounts[index].embed(images)))
