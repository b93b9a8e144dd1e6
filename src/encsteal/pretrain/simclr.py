"""SimCLR (Chen et al., 2020): how the provider pre-trains its target encoder (StolenEncoder §II-A, §V-A).

Two augmented views of each image go through the encoder f and a projection head h; NT-Xent
(`encsteal.losses.nt_xent`, Eq. 1) pulls the two views of an image together and pushes the other 2(N − 1)
images of the batch away. Only f is kept.

With pretrain.small_views = k (multi-crop), each image also gives k small crops, each paired with both full
views (`encsteal.losses.multi_crop_nt_xent`); the full and the small views go through the encoder as two batches.

An `auxiliary` task (the ownership watermark, `encsteal.ownership.watermark`) is called with the encoder after each
step's loss and returns a term added to it; its parameters are optimised and its state saved with the encoder's.
"""

from __future__ import annotations

import torch
from torch import nn

from encsteal.augment import SMALL_CROP_SCALE, build_augmentation
from encsteal.config import PretrainConfig
from encsteal.distributed import check_batch, gather, shard, wrap
from encsteal.losses import multi_crop_nt_xent
from encsteal.models import Encoder, build_encoder
from encsteal.models.heads import ProjectionHead
from encsteal.training import EpochLoop, TrainContext, channels_last_cat, make_optimizer, to_float_batch


class EachBatch(nn.Module):
    """`model` on each batch of a list, in one forward call: views of different sizes cannot share a batch, and
    DistributedDataParallel expects one forward per backward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.model(batch) for batch in batches]


def pretrain_simclr(images: torch.Tensor, config: PretrainConfig, ctx: TrainContext,
                    auxiliary: nn.Module | None = None) -> Encoder:
    """Pre-train config.arch on uint8 images N x 3 x H x W with SimCLR; returns the encoder in eval mode."""
    device, dist = ctx.device, ctx.dist
    torch.manual_seed(ctx.seed)
    encoder = build_encoder(config.arch, config.stem).to(device).to(memory_format=torch.channels_last)
    head = ProjectionHead(encoder.feature_dim, encoder.feature_dim, config.projection_dim).to(device)
    parameters = [*encoder.parameters(), *head.parameters(), *(auxiliary.parameters() if auxiliary else ())]
    optimizer = make_optimizer(config.optimizer, parameters, config.lr, config.weight_decay, config.momentum)
    loop = EpochLoop(ctx, {"encoder": encoder, "head": head, **({"auxiliary": auxiliary} if auxiliary else {})},
                     optimizer, {"pretrain": config.recipe()},
                     images, stage="pretrain", title=f"pre-training {config.arch} (SimCLR)", epochs=config.epochs,
                     batch_size=config.batch_size, lr=config.lr, lr_schedule=config.lr_schedule,
                     warmup_epochs=config.warmup_epochs, images_per_step=2 * config.batch_size)
    augment = build_augmentation(config.augment, config.view_size or images.shape[-1], color_strength=config.color_strength).to(device)
    small = config.small_views
    if small:
        small_augment = build_augmentation(config.augment, config.small_view_size, SMALL_CROP_SCALE, config.color_strength).to(device)
    check_batch(config.batch_size, len(images), dist, "pretrain.batch_size")
    model = ctx.compiled(wrap(EachBatch(nn.Sequential(encoder, head)), dist, device))

    model.train()
    for index in loop:
        x = to_float_batch(images[index], device)
        full_views = augment(torch.cat([x, x])).chunk(2)  # one call, every row its own draw
        # this rank's slice of every view (all of them in one process); the loss on the whole batch
        batches = [channels_last_cat([shard(view, dist) for view in full_views])]
        if small:
            small_views = small_augment(x.repeat(small, 1, 1, 1)).chunk(small)
            batches.append(channels_last_cat([shard(view, dist) for view in small_views]))
        with ctx.autocast():
            parts = model(batches)
        full = [gather(p, dist) for p in parts[0].float().chunk(2)]
        crops = [gather(p, dist) for p in parts[1].float().chunk(small)] if small else []
        loss = multi_crop_nt_xent(full, crops, config.temperature)
        if auxiliary is not None:
            with ctx.autocast():
                loss = loss + auxiliary(encoder)
        loop.step(loss)
    return encoder.eval()
