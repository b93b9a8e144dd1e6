"""Attacks: name -> steal(target, surrogate, config, ctx, labels=None) -> stolen Encoder.

An attack sees the victim only through `Target.embed`, so the same code steals from an encoder in this
process or from a remote API; the target (not the attack) counts the queries.
"""

from encsteal.attacks.stolenencoder import steal, steal_query_aug
from encsteal.attacks.surrogate_pretrain import pretrain_on_surrogate

ATTACKS = {
    "stolenencoder": steal,  # Algorithm 1; attack.lam=0 is StolenEncoder-w/o-aug
    "stolenencoder-query-aug": steal_query_aug,  # (e + 1)·|D| queries
    "surrogate-pretrain": pretrain_on_surrogate,  # SimCLR on the surrogate set, 0 queries
}

__all__ = ["ATTACKS"]
