"""Pre-training-encoder (StolenEncoder §V-A4): the attacker pre-trains its own encoder with SimCLR on its
surrogate set and never queries the target (0 queries). The baseline that shows what querying buys. With a pool
(surrogate.pool), it trains on the whole pool: the unbought images too."""

from __future__ import annotations

import torch

from encsteal.config import AttackConfig, ConfigError, PretrainConfig
from encsteal.models import Encoder
from encsteal.pretrain import pretrain_simclr
from encsteal.target import Target
from encsteal.training import TrainContext

OBJECTIVE_KEYS = ("loss", "clean_weight", "lam", "views", "normalize_features", "bought_views", "init", "unbought_weight")
"""Attack settings of StolenEncoder's objective (Eq. 7), which SimCLR on the surrogate set has no use for."""


def pretrain_on_surrogate(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext,
                          labels: torch.Tensor | None = None, *, unbought: torch.Tensor | None = None,
                          init: Encoder | None = None) -> Encoder:
    """SimCLR on the surrogate images with the attack's architecture, epochs, batch size, optimizer, lr, lr
    schedule, weight decay, momentum, temperature and augmentations; the objective's settings are refused."""
    del target, init  # this baseline never queries the target; attack.init is refused below
    set_here = [f"attack.{key}={getattr(config, key)}" for key in OBJECTIVE_KEYS
                if getattr(config, key) != AttackConfig.model_fields[key].default]
    if set_here:
        raise ConfigError(f"attack.name=surrogate-pretrain trains SimCLR on the surrogate set, which has no use for "
                          f"{', '.join(set_here)}: leave them out, or choose attack.name=stolenencoder")
    simclr = PretrainConfig(
        method="simclr",
        arch=config.arch,
        stem=config.stem,
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        lr=config.lr,
        lr_schedule=config.lr_schedule,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        temperature=config.temperature,
        augment=config.augment,
    )
    pool = surrogate if unbought is None else torch.cat([surrogate, unbought])
    return pretrain_simclr(pool, simclr, ctx)
