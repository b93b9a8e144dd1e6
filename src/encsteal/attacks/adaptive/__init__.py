"""Adaptive attackers: the attacker adapts the way it queries, and what it makes of the answers, to the defense it
faces. Each option is a key of `attack.adaptive` (encsteal.config.AdaptiveConfig), usable with any attack, and
wraps the attacker's view of the target:

    attack -> recover -> average -> query cache -> accounts (sybils aligned, or paced) -> cover mixed in -> API

Below the cache (the cache keeps what they return): `align` (align.py) maps the answers of sybil accounts
(target.accounts) into one space, `pace` (pace.py) moves to a fresh account whenever one has sent its share,
`mix` (mix.py) pads every request with benign-looking cover images. Above it: `average` (average.py) asks
near-duplicates and averages their answers, `recover` (recover.py) projects the answers onto their directions
above the noise floor. Queries spent below the cache that the attack did not ask for (anchors, cover) are counted
in `extra_queries` and reported with the others; the anchors' answers are kept per account (`KeptAnchors`), and
`extra_reused` counts those a resumed run did not buy again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from encsteal.attacks.adaptive.align import AlignedSybils, Aligner, KeptAnchors, ask_directly
from encsteal.attacks.adaptive.average import AveragingTarget
from encsteal.attacks.adaptive.mix import CoverTarget
from encsteal.attacks.adaptive.pace import PacedAccounts
from encsteal.attacks.adaptive.recover import RecoveringTarget
from encsteal.config import AdaptiveConfig
from encsteal.target import SybilTarget, Target

ADAPTIVE: dict[str, dict] = {
    "align": {"settings": {"align_anchors": 300}, "needs": {"accounts": 4}, "against": "b4b"},
    "average": {"settings": {"repeats": 4}, "against": "noise"},
    "pace": {"settings": {"account_queries": 500}, "against": "detection"},
    "mix": {"settings": {"mix": 3.0}, "against": "detection"},
    "recover": {"settings": {"recover": "pca"}, "against": "noise"},
}
"""name -> an example of its settings (attack.adaptive.*), what else it needs (target.*) and the defense it is
meant against; the matrix files and the tests use these."""


def account_layer(open_account: Callable[[int], Target], accounts: int, adaptive: AdaptiveConfig,
                  anchors: torch.Tensor | None, cover: torch.Tensor | None, seed: int,
                  kept_anchors: KeptAnchors | None = None) -> Target:
    """The attacker's accounts as one Target: `open_account(i)` is the i-th account's own channel to the API;
    `kept_anchors` keeps the accounts' answers to the anchors (None: asked and not kept)."""

    def opened(index: int) -> Target:
        account = open_account(index)
        return CoverTarget(account, cover, adaptive.mix, seed + index) if adaptive.mix else account

    aligner = Aligner(anchors, kept_anchors or ask_directly) if adaptive.align_anchors else None
    if adaptive.account_queries is not None:
        return PacedAccounts(opened, adaptive.account_queries, aligner)
    targets = [opened(index) for index in range(accounts)]
    if len(targets) == 1:
        return targets[0]
    return AlignedSybils(targets, aligner) if aligner is not None else SybilTarget(targets)


def answer_layer(cached: Target, adaptive: AdaptiveConfig, seed: int) -> Target:
    """What the attack sees of the cached answers: averaged near-duplicates, recovered features."""
    target = cached
    if adaptive.repeats > 1:
        target = AveragingTarget(target, adaptive.repeats, adaptive.jitter, seed)
    if adaptive.recover == "pca":
        target = RecoveringTarget(target)
    return target


def extra_reused(target: Target) -> int:
    """Of the extra queries, the anchors answered before the run was resumed: counted, not bought again."""
    aligner = getattr(target, "aligner", None)
    return 0 if aligner is None else aligner.queries - aligner.bought


def extra_queries(target: Target) -> int:
    """Images sent below the cache that the attack did not ask for: anchors through every account, cover."""
    total = getattr(target, "extra_queries", 0)
    for account in getattr(target, "targets", []):
        total += getattr(account, "extra_queries", 0)
    return total


__all__ = ["ADAPTIVE", "AlignedSybils", "Aligner", "AveragingTarget", "CoverTarget", "KeptAnchors", "PacedAccounts",
           "RecoveringTarget", "account_layer", "answer_layer", "extra_queries", "extra_reused"]
