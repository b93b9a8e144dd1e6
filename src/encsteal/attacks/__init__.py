"""Attacks: name -> steal(target, surrogate, config, ctx, labels=None, *, unbought=None, init=None) -> stolen Encoder.

An attack sees the victim only through `Target.embed`, so the same code steals from an encoder in this
process or from a remote API; the target (not the attack) counts the queries. `unbought` are the attacker's
pool images it did not buy, `init` the copy's starting weights (encsteal.attacks.pool).
"""

from collections.abc import Callable

from encsteal.attacks.rda import steal_rda
from encsteal.attacks.stolenencoder import steal, steal_query_aug
from encsteal.attacks.surrogate_pretrain import pretrain_on_surrogate
from encsteal.config import AttackConfig

ATTACKS = {
    "stolenencoder": steal,  # Algorithm 1; attack.lam=0 is StolenEncoder-w/o-aug; bought_views: query augmentation
    "stolenencoder-query-aug": steal_query_aug,  # (e + 1)·|D| queries
    "surrogate-pretrain": pretrain_on_surrogate,  # SimCLR on the surrogate set (or pool), 0 queries
    "rda": steal_rda,  # Wu et al., ECCV 2024: prototypes of P views per image, multi-relational loss
}

QUERIES_PER_IMAGE: dict[str, Callable[[AttackConfig], int]] = {
    "stolenencoder": lambda config: 1 + config.bought_views,
    "stolenencoder-query-aug": lambda config: 1,  # and every epoch's views on top: its cost is not fixed in advance
    "surrogate-pretrain": lambda config: 1,  # buys nothing: surrogate.size images, all unbought
    "rda": lambda config: config.prototype_views,
}
"""Features an attack buys per surrogate image before training: a budget of surrogate.size queries buys
size // this many images."""

__all__ = ["ATTACKS", "QUERIES_PER_IMAGE"]
