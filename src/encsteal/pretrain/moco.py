"""MoCo v2 (He et al., 2020; Chen et al., 2020): the other way to pre-train a target (StolenEncoder §II-A, Eq. 2).

A query encoder f (with head) and a momentum copy f_m; for a positive pair (x_q, x_k),

    ℓ = −log  exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_{k⁻ ∈ queue} exp(q·k⁻/τ))

with q = h(f(x_q)), k⁺ = h_m(f_m(x_k)) L2-normalised, and a FIFO queue of past keys as negatives.
The momentum copy follows θ_m ← m·θ_m + (1 − m)·θ after every step. An `auxiliary` task is trained along as in
`encsteal.pretrain.simclr`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from encsteal.augment import build_augmentation
from encsteal.config import ConfigError, PretrainConfig
from encsteal.models import Encoder, build_encoder
from encsteal.models.heads import ProjectionHead
from encsteal.training import EpochLoop, TrainContext, channels_last, make_optimizer, to_float_batch


def moco_loss(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of Eq. (2): each query's positive is its own key; the queue (K x D) holds the negatives."""
    q, k = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def pretrain_moco(images: torch.Tensor, config: PretrainConfig, ctx: TrainContext,
                  auxiliary: nn.Module | None = None) -> Encoder:
    """Pre-train config.arch on uint8 images N x 3 x H x W with MoCo v2; returns the query encoder in eval mode."""
    if ctx.dist.active:  # the queue and the momentum encoder would need their own exchange between ranks
        raise ConfigError("MoCo pre-training runs in one process; use pretrain.method=simclr under torchrun")
    if ctx.precision != "fp32" or ctx.compile:
        raise ConfigError("MoCo pre-training runs in fp32 without torch.compile; set precision=fp32 compile=false")
    device = ctx.device
    torch.manual_seed(ctx.seed)
    encoder = build_encoder(config.arch, config.stem).to(device).to(memory_format=torch.channels_last)
    head = ProjectionHead(encoder.feature_dim, encoder.feature_dim, config.projection_dim).to(device)
    momentum_encoder, momentum_head = copy.deepcopy(encoder), copy.deepcopy(head)
    for p in [*momentum_encoder.parameters(), *momentum_head.parameters()]:
        p.requires_grad_(False)
    queue = F.normalize(torch.randn(config.moco_queue, config.projection_dim, device=device), dim=1)
    queue_pointer = torch.zeros((), dtype=torch.long)
    parameters = [*encoder.parameters(), *head.parameters(), *(auxiliary.parameters() if auxiliary else ())]
    optimizer = make_optimizer(config.optimizer, parameters, config.lr, config.weight_decay, config.momentum)
    loop = EpochLoop(
        ctx,
        {"encoder": encoder, "head": head, "momentum_encoder": momentum_encoder, "momentum_head": momentum_head,
         **({"auxiliary": auxiliary} if auxiliary else {})},
        optimizer, {"pretrain": config.recipe()}, images, stage="pretrain",
        title=f"pre-training {config.arch} (MoCo v2)", epochs=config.epochs, batch_size=config.batch_size,
        lr=config.lr, lr_schedule=config.lr_schedule, warmup_epochs=config.warmup_epochs,
        images_per_step=2 * config.batch_size, extra={"queue": queue, "queue_pointer": queue_pointer},
    )
    augment = build_augmentation(config.augment, config.view_size or images.shape[-1], color_strength=config.color_strength).to(device)
    online = [*encoder.parameters(), *head.parameters()]
    momentum = [*momentum_encoder.parameters(), *momentum_head.parameters()]

    for module in (encoder, head, momentum_encoder, momentum_head):
        module.train()
    for index in loop:
        x = to_float_batch(images[index], device)
        x_q, x_k = (channels_last(view) for view in augment(torch.cat([x, x])).chunk(2))
        queries = head(encoder(x_q))
        with torch.no_grad():
            torch._foreach_mul_(momentum, config.moco_momentum)
            torch._foreach_add_(momentum, online, alpha=1 - config.moco_momentum)
            keys = F.normalize(momentum_head(momentum_encoder(x_k)), dim=1)
        loss = moco_loss(queries, keys, queue, config.temperature)
        if auxiliary is not None:
            loss = loss + auxiliary(encoder)
        loop.step(loss)
        with torch.no_grad():  # enqueue the newest keys over the oldest
            slots = (queue_pointer + torch.arange(len(keys))) % len(queue)
            queue[slots.to(device)] = keys
            queue_pointer.copy_((queue_pointer + len(keys)) % len(queue))
    return encoder.eval()
