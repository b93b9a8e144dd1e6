"""Sybil accounts aligned on anchors: undoing B4B's per-account transformations.

B4B answers every account in its own feature space, f_a(x) = P_a(s_a ⊙ f(x) + t_a) (a secret scale, shift, padding
and shuffle per account), so that an attacker who splits its budget over sybil accounts and pools their answers
trains on k incompatible targets. The adaptive attacker first asks the same public anchor images X_A through every
account and fits, for every account a, the affine map into the first account's space by ridge least squares

    (W_a, b_a) = argmin ‖[f_a(X_A), 1] [W_a; b_a] − f_1(X_A)‖² + ρ‖W_a‖²

then maps each answer of account a through it. An affine map of each dimension followed by a permutation is undone
exactly with more anchors than dimensions; B4B's noise is small while an account's coverage is (the anchors come
first), so the maps are fitted on clean answers. The anchors cost len(X_A) queries per account.

Paid answers are never bought twice: B4B answers each account in its own space, so the run's query cache (keyed by
the image) cannot hold them, and `KeptAnchors` keeps every account's answers to the anchors in a query cache of its
own beside it; a resumed run refits the same maps from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from encsteal.defenses.accounts import AccountRefused
from encsteal.query_cache import CachedTarget, QueryCache
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


class KeptAnchors:
    """Asks the anchors through the account of index i with its answers kept in `directory/account-<i>.sqlite` (a
    query cache for the target `target_id` and that account): answers bought before are not bought again."""

    def __init__(self, directory: Path, target_id: str, run: str, batch_size: int) -> None:
        self.directory, self.target_id, self.run, self.batch_size = Path(directory), target_id, run, batch_size
        self.reused = 0
        """Anchor answers taken from the caches instead of bought."""

    def _cache(self, index: int) -> QueryCache:
        return QueryCache(self.directory / f"account-{index}.sqlite", f"{self.target_id}|anchors|account={index}")

    def asked(self) -> int:
        """Anchor images this run has been answered through all its accounts, now or before it was resumed."""
        total = 0
        for path in self.directory.glob("account-*.sqlite"):
            cache = self._cache(int(path.stem.removeprefix("account-")))
            total += cache.asked(self.run)
            cache.close()
        return total

    def __call__(self, index: int, account: Target, anchors: torch.Tensor) -> torch.Tensor:
        cache = self._cache(index)
        try:
            cached = CachedTarget(account, cache, run=self.run, batch_size=self.batch_size, progress=False)
            answers = cached.embed(anchors)
        finally:
            cache.close()
        self.reused += cached.reused
        if cached.refusal is not None:  # a map needs every anchor: the account is of no use
            raise AccountRefused(cached.refusal["message"], cached.refusal["account"], cached.refusal["account_images"])
        return answers


def ask_directly(index: int, account: Target, anchors: torch.Tensor) -> torch.Tensor:
    """The anchors asked through the account, nothing kept."""
    return account.embed(anchors)


class Aligner:
    """The anchors and the first account's answers to them; `fit(account, index)` asks the anchors through another
    account (by `ask`: `KeptAnchors`, or directly) and returns the map of its answers into the first account's space."""

    def __init__(self, anchors: torch.Tensor,
                 ask: Callable[[int, Target, torch.Tensor], torch.Tensor] = ask_directly) -> None:
        self.anchors = anchors
        self.ask = ask
        self.reference: torch.Tensor | None = None
        self.sent = 0

    @property
    def queries(self) -> int:
        """Anchor images asked through every account (with KeptAnchors: the run's, also those of before it was
        resumed, which a run whose every answer is cached does not ask again)."""
        return self.ask.asked() if isinstance(self.ask, KeptAnchors) else self.sent

    @property
    def bought(self) -> int:
        """Anchor images bought by this object (the others it asked were answered from KeptAnchors)."""
        return self.sent - (self.ask.reused if isinstance(self.ask, KeptAnchors) else 0)

    def fit(self, account: Target, index: int):
        answers = self.ask(index, account, self.anchors)
        self.sent += len(self.anchors)
        if self.reference is None:
            self.reference = answers
            return lambda features: features
        weights, bias = fit_affine(answers, self.reference)
        return lambda features: features @ weights + bias


class AccountGroup:
    """Requests spread over several accounts of the attacker, as the pipeline reads them: the accounts
    (`targets`), the images they bought (`queries`) and the anchors bought to align them (`extra_queries`)."""

    accounts: list[Target]
    aligner: Aligner | None

    @property
    def targets(self) -> list[Target]:
        return self.accounts

    @property
    def queries(self) -> int:
        return sum(account.queries for account in self.accounts)

    @property
    def extra_queries(self) -> int:
        return 0 if self.aligner is None else self.aligner.queries


class AlignedSybils(AccountGroup):
    """One attacker behind several accounts, request i to account i mod k as `SybilTarget` (a refused account
    dropped), every account's answers mapped into the first account's space (the maps fitted on the anchors before
    the first request; an account refused while it is asked the anchors is dropped, and the next one is the
    reference)."""

    def __init__(self, accounts: Sequence[Target], aligner: Aligner) -> None:
        if len(accounts) < 2:
            raise ValueError("aligning accounts needs at least two of them")
        self.accounts = list(accounts)
        self.aligner = aligner
        self.maps: list | None = None
        self.requests = 0
        self.refused: dict[int, AccountRefused] = {}

    def _fit(self, index: int):
        try:
            return self.aligner.fit(self.accounts[index], index)
        except AccountRefused as refusal:
            self.refused[index] = refusal
            return None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.maps is None:
            self.maps = [self._fit(index) for index in range(len(self.accounts))]
        return next_live_account(self, lambda index: self.maps[index](self.accounts[index].embed(images)))
