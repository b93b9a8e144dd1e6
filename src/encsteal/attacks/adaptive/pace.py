"""Staying under per-account thresholds: a fresh account whenever one has sent its share.

Detection flags an account whose coverage of the embedding space passes a threshold, B4B's noise grows with it,
and proof-of-work's price too: every account-aware defense measures accounts, not attackers. An attacker who knows
(or probes) how far an account may go before it is flagged sends at most `limit` images through each account and
then opens the next one, `attacker`, `attacker-2`, ... One request may be split between two accounts. With an
`Aligner`, every new account's answers are mapped into the first account's space (B4B transforms per account).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from encsteal.attacks.adaptive.align import AccountGroup, Aligner
from encsteal.defenses.accounts import AccountRefused
from encsteal.target import Target


class PacedAccounts(AccountGroup):
    """Accounts opened one after another (`open_account(i)` gives the i-th, from 0), each sending at most `limit`
    images (the anchors included). An account the provider refuses before its share is sent is left for the next
    one; AccountRefused if a fresh account is refused before it has answered any of the attack's images."""

    def __init__(self, open_account: Callable[[int], Target], limit: int, aligner: Aligner | None = None) -> None:
        if aligner is not None and len(aligner.anchors) >= limit:
            raise ValueError(f"the {len(aligner.anchors)} anchors leave no room under {limit} images per account")
        self.open_account, self.limit, self.aligner = open_account, limit, aligner
        self.accounts: list[Target] = []
        self.maps: list = []
        self.sent: list[int] = []
        """Images each account has sent (the anchors included)."""
        self.refused: dict[int, AccountRefused] = {}

    def _current(self) -> int:
        last = len(self.accounts) - 1
        if not self.accounts or last in self.refused or self.sent[last] >= self.limit:
            account = self.open_account(len(self.accounts))
            self.accounts.append(account)
            self.sent.append(0)
            self.maps.append(lambda features: features)
            if self.aligner is not None:
                try:
                    self.maps[-1] = self.aligner.fit(account, len(self.accounts) - 1)
                except AccountRefused as refusal:  # flagged by the anchors alone: a fresh account would be too
                    self.refused[len(self.accounts) - 1] = refusal
                    raise
                self.sent[-1] = len(self.aligner.anchors)
        return len(self.accounts) - 1

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        answers = []
        start = 0
        while start < len(images):
            index = self._current()
            fresh = self.sent[index] == (0 if self.aligner is None else len(self.aligner.anchors))
            part = images[start:start + self.limit - self.sent[index]]
            try:
                answers.append(self.maps[index](self.accounts[index].embed(part)))
            except AccountRefused as refusal:
                self.refused[index] = refusal
                if fresh:  # refused before answering anything of the attack's: another account would be too
                    raise
                continue
            self.sent[index] += len(part)
            start += len(part)
        return torch.cat(answers)
