"""Pre-training-encoder (StolenEncoder §V-A4): the attacker pre-trains its own encoder with SimCLR on its
surrogate set and never queries the target (0 queries). The baseline that shows what querying buys."""

from __future__ import annotations

import torch

from encsteal.config import AttackConfig, PretrainConfig
from encsteal.models import Encoder
from encsteal.pretrain import pretrain_simclr
from encsteal.target import Target
from encsteal.training import TrainContext


def pretrain_on_surrogate(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext,
                          labels: torch.Tensor | None = None) -> Encoder:
    """SimCLR on the surrogate images with the attack's architecture, epochs, batch size, lr, lr schedule and
    augmentations."""
    del target  # this baseline never queries it
    simclr = PretrainConfig(
        method="simclr",
        arch=config.arch,
        stem=config.stem,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        lr_schedule=config.lr_schedule,
        weight_decay=config.weight_decay,
        temperature=config.temperature,
        augment=config.augment,
    )
    return pretrain_simclr(surrogate, simclr, ctx)
