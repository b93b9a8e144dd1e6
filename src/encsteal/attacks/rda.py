"""RDA (Wu et al., "Refine, Discriminate and Align: Stealing Encoders via Sample-Wise Prototypes and
Multi-Relational Extraction", ECCV 2024).

Refine: before any training, buy the target's features of P views of every surrogate image x — x itself and
P − 1 augmented views B_j(x) (`attack.bought_augment`, crop scale `attack.bought_crop_scale`; the authors use a
mild crop of 0.9 of the area) — and average them, each scaled to unit length, into x's prototype

    p(x) = 1/P · Σ_j f_t(B_j x) / ‖f_t(B_j x)‖        (B_0 the identity: the clean image is one of the P views)

a less biased target than the feature of one view. That costs P queries per image, once: training is
query-free (the budget buys size / P images; the pipeline divides).

Discriminate and align: every step, Q = `attack.views` fresh augmented views A_q(x) of each image in the batch
(`attack.augment`, crop scale `attack.crop_scale`; the authors' 0.75) go through the copy f_s, and the copy's
unit embeddings s = f_s(A_q x)/‖f_s(A_q x)‖ are pulled to their prototypes by the multi-relational loss
(encsteal.losses.multi_relational, temperature `attack.temperature`, weights α = `attack.discriminate_weight`,
β = `attack.align_weight`):

    L = 1/Q · Σ_q  α·L_D(s_q, p) + β·L_A(s_q, p)

The authors' code adds a solarisation to both sets of views, which encsteal's augmentations do not have, and
trains with Adam at lr 1e-3 and weight decay 1e-4 (`attack.weight_decay`), 5 views, 10 prototype views,
temperature 0.07 (configs/attacks/rda.yaml). As every attack here, it can start from the attacker's SimCLR
encoder of its pool (`init`) and learn from unbought pool images (`unbought`, attack.unbought_weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from encsteal.attacks.answers import keep_answered
from encsteal.attacks.pool import start_copy
from encsteal.attacks.stolenencoder import bought_views
from encsteal.config import AttackConfig, ConfigError
from encsteal.distributed import gather, shard, unwrap
from encsteal.losses import multi_relational
from encsteal.models import Encoder
from encsteal.target import Target
from encsteal.training import EpochLoop, TrainContext, channels_last_cat, to_float_batch

UNUSED_KEYS = ("loss", "clean_weight", "lam", "normalize_features", "bought_views")
"""StolenEncoder's objective settings, which RDA's loss has no use for."""


def prototypes(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext) -> torch.Tensor:
    """p(x) for every surrogate image: the mean of the target's unit features of x and P − 1 bought views (of
    those answered, if the provider refused the attacker half-way; NaN for an image with none)."""
    views = bought_views(surrogate, config.bought_augment, config.bought_crop_scale, config.prototype_views - 1,
                         ctx.seed, ctx.device)
    features = target.embed(torch.cat([surrogate, *views]))
    return F.normalize(features, dim=1).view(config.prototype_views, len(surrogate), -1).nanmean(dim=0)


def steal_rda(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext,
              labels: torch.Tensor | None = None, *, unbought: torch.Tensor | None = None,
              init: Encoder | None = None) -> Encoder:
    """RDA on uint8 surrogate images N x 3 x H x W: P queries per image, then query-free training."""
    del labels  # RDA learns from the target's features alone
    set_here = [f"attack.{key}={getattr(config, key)}" for key in UNUSED_KEYS
                if getattr(config, key) != AttackConfig.model_fields[key].default]
    if set_here:
        raise ConfigError(f"attack.name=rda trains with its own loss, which has no use for {', '.join(set_here)}: "
                          "leave them out (rda's settings: views, prototype_views, bought_augment, "
                          "discriminate_weight, align_weight, temperature)")
    if config.batch_size < 2:
        raise ConfigError("attack.name=rda needs attack.batch_size at least 2: the other images are its negatives")
    device, dist = ctx.device, ctx.dist
    targets, surrogate, _ = keep_answered(prototypes(target, surrogate, config, ctx), surrogate)
    copy = start_copy(config, targets.shape[1], init, unbought, ctx)
    extra, views = copy.extra, config.views
    extra_images = 2 * extra.batch_size if extra is not None else 0
    loop = EpochLoop(ctx, copy.modules, copy.optimizer, {"attack": config.recipe()}, surrogate,
                     stage="steal", title=f"stealing with RDA ({config.arch})", epochs=config.epochs,
                     batch_size=config.batch_size, lr=config.lr, lr_schedule=config.lr_schedule,
                     images_per_step=config.batch_size * views + extra_images)
    augment, model = copy.model(config, surrogate, ctx)
    for index in loop:
        x = to_float_batch(surrogate[index], device)
        augmented = [augment(x) for _ in range(views)]
        pool_views = extra.views() if extra is not None else []
        with ctx.autocast():
            out = model(channels_last_cat([shard(t, dist) for t in (*augmented, *pool_views)])).float()
        if dist.active:
            out = torch.cat([gather(part, dist) for part in out.tensor_split(views)])
        out, pool_out = out.split([len(x) * views, extra_images])
        p = targets[index].to(device)
        loss = sum(multi_relational(s, p, config.temperature, config.discriminate_weight, config.align_weight)
                   for s in out.tensor_split(views)) / views
        if extra is not None:
            loss = loss + extra.loss(*pool_out.chunk(2))
        loop.step(loss)
    return unwrap(model).eval()
