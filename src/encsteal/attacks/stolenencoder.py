"""StolenEncoder (Liu et al., CCS 2022, Algorithm 1) and its query-hungry variant.

Query the target once per surrogate image, v(x) = f_t(x), then train a randomly initialised f_s to minimise

    L = w·L1 + λ·L2,   L1 = mean_x d(v(x), f_s(x)),   L2 = 1/k Σ_j mean_x d(v(x), f_s(A_j(x)))      (Eq. 7)

with k fresh augmented views A_j(x) per image and epoch (k = 1 in the paper; the official code's k views
weigh λ/k each). L2 reuses v(x) for the augmented images — the paper's key approximation
f_t(A(x)) ≈ f_t(x) — so the attack costs |D| queries. λ = 0 is the paper's StolenEncoder-w/o-aug and then
no augmented view is computed at all. d is `attack.loss`: the paper's distances or any stealing loss of
encsteal.losses; w = `attack.clean_weight` (1 in the paper; Cont-Steal's contrastive loss on augmented
views only is w = 0, loss nt-xent).

`steal_query_aug` is StolenEncoder-query-aug: L2' = mean_x d(f_t(A(x)), f_s(A(x))) (Eq. 5) with the target
queried on every epoch's augmented images, (e + 1)·|D| queries.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from encsteal.augment import build_augmentation
from encsteal.config import AttackConfig, ConfigError
from encsteal.distributed import check_batch, gather, shard, unwrap, wrap
from encsteal.losses import LABELLED_LOSSES, MIN_BATCH_SIZES, stealing_loss
from encsteal.models import Encoder, build_encoder
from encsteal.progress import progress_bar
from encsteal.target import Target
from encsteal.training import (
    EpochState,
    TrainContext,
    channels_last_cat,
    make_optimizer,
    minibatches,
    scheduled_lr,
    set_lr,
    start_epoch,
    steps_per_epoch,
    to_float_batch,
)


def _prepare(features: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    return F.normalize(features, dim=1) if config.normalize_features else features


def _to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Augmented floats -> the uint8 images an API receives."""
    return batch.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _train(
    target_features: torch.Tensor | None,
    surrogate: torch.Tensor,
    config: AttackConfig,
    ctx: TrainContext,
    feature_dim: int,
    query_target: Target | None,
    labels: torch.Tensor | None,
) -> Encoder:
    """The training loop shared by both variants; query_target is set only for query-aug."""
    device, dist = ctx.device, ctx.dist
    torch.manual_seed(ctx.seed)
    stolen = build_encoder(config.arch, config.stem, out_dim=feature_dim).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config.optimizer, stolen.parameters(), config.lr, config.weight_decay, config.momentum)
    state = EpochState(ctx, {"stolen": stolen}, optimizer)
    first_epoch = state.resume()
    loss_fn = stealing_loss(config.loss, config.temperature)
    augment = build_augmentation(config.augment, surrogate.shape[-1]).to(device)
    views = config.views if config.lam > 0 else 0
    n = len(surrogate)
    steps = steps_per_epoch(n, config.batch_size)
    check_batch(config.batch_size, n, dist, "attack.batch_size")
    model = ctx.compiled(wrap(stolen, dist, device))

    model.train()
    with progress_bar(config.epochs - first_epoch, f"stealing ({config.arch})", enabled=ctx.progress) as advance:
        for epoch in range(first_epoch, config.epochs):
            generator = start_epoch(ctx.seed, epoch)
            started, total_loss = time.perf_counter(), 0.0
            for step, index in enumerate(minibatches(n, config.batch_size, generator), start=epoch * steps):
                set_lr(optimizer, scheduled_lr(config.lr, config.lr_schedule, step, config.epochs * steps))
                x = to_float_batch(surrogate[index], device)
                batch = len(index)
                augmented = [augment(x) for _ in range(views)]
                if query_target is not None:
                    # query-aug: pay for f_t(A(x)) of every view, every epoch
                    v_views = [_prepare(query_target.embed(_to_uint8(a)), config).to(device) for a in augmented]
                    augmented = [_to_uint8(a).to(device).float().div_(255) for a in augmented]  # what the target saw
                else:
                    v_views = []
                v = target_features[index].to(device)
                y = labels[index].to(device) if labels is not None else None
                # One forward pass over the clean batch and all its views: one graph, k + 1 times the batch
                # (under torchrun, this rank's slice of each, gathered back into the whole batch).
                with ctx.autocast():
                    part = model(channels_last_cat([shard(t, dist) for t in (x, *augmented)]))
                part = part.float()
                if dist.active:
                    out = _prepare(torch.cat([gather(p, dist) for p in part.tensor_split(1 + views)]), config)
                else:
                    out = _prepare(part, config)
                loss = config.clean_weight * loss_fn(v, out[:batch], y) if config.clean_weight else 0.0
                for j in range(views):
                    v_j = v_views[j] if query_target is not None else v
                    loss = loss + (config.lam / views) * loss_fn(v_j, out[(j + 1) * batch : (j + 2) * batch], y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
            seconds = time.perf_counter() - started
            images = steps * config.batch_size * (1 + views) if steps else 0
            state.save(epoch, dist.main)
            ctx.log({"stage": "steal", "epoch": epoch + 1, "loss": total_loss / max(steps, 1),
                     "seconds": seconds, "lr": optimizer.param_groups[0]["lr"],
                     "images_per_s": images / seconds if seconds else None})
            advance(1, status=f"loss {total_loss / max(steps, 1):.4f}")
    state.finish(dist.main)
    return unwrap(model).eval()


def _check(config: AttackConfig, labels: torch.Tensor | None) -> None:
    """Settings that cannot work, refused before a single query is bought."""
    if config.loss in LABELLED_LOSSES and labels is None:
        raise ConfigError(f"attack.loss={config.loss} needs the surrogate images' labels, and this surrogate set has "
                          "none: use a labelled surrogate dataset or another loss")
    min_batch = MIN_BATCH_SIZES.get(config.loss, 1)
    if config.batch_size < min_batch:
        raise ConfigError(f"attack.loss={config.loss} needs attack.batch_size at least {min_batch}, "
                          f"got {config.batch_size}")
    if config.clean_weight == 0 and config.lam == 0:
        raise ConfigError("attack.clean_weight=0 and attack.lam=0 leave nothing to minimise")


def steal(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext,
          labels: torch.Tensor | None = None) -> Encoder:
    """StolenEncoder: one query per surrogate image (uint8 N x 3 x H x W), then minimise w·L1 + λ·L2.
    `labels` (one per image) are used only by label-using losses (supcon)."""
    _check(config, labels)
    features = _prepare(target.embed(surrogate), config)
    return _train(features, surrogate, config, ctx, features.shape[1], query_target=None, labels=labels)


def steal_query_aug(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext,
                    labels: torch.Tensor | None = None) -> Encoder:
    """StolenEncoder-query-aug: also query the target on each epoch's augmented images."""
    _check(config, labels)
    if config.lam == 0:
        raise ConfigError("attack stolenencoder-query-aug queries augmented images, and attack.lam=0 has none: use attack.name=stolenencoder")
    features = _prepare(target.embed(surrogate), config)
    return _train(features, surrogate, config, ctx, features.shape[1], query_target=target, labels=labels)
