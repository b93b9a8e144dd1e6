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

Query augmentation under a fixed budget (`attack.bought_views` = k): buy the features of k augmented views
B_j(x) of every image once (`attack.bought_augment`), and train on each view as on one more image, with its own
bought feature in L1 and the approximation f_t(A(B_j x)) ≈ f_t(B_j x) in L2: (1 + k)·|D| queries, so that a
budget buys it for 1 / (1 + k) of the images (the pipeline divides).

An attacker the provider refuses half-way trains on the images it has answers for (encsteal.attacks.answers).

From the attacker's pool (encsteal.attacks.pool): `init` starts the copy from given weights (the attacker's own
SimCLR encoder of its pool, or an earlier round's copy), and with `unbought` images and attack.unbought_weight =
μ each step adds μ·NT-Xent between two views of a batch of them (UnboughtTerm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from encsteal.attacks.answers import keep_answered
from encsteal.attacks.pool import start_copy
from encsteal.augment import build_augmentation
from encsteal.config import AttackConfig, ConfigError
from encsteal.distributed import gather, shard, unwrap
from encsteal.losses import LABELLED_LOSSES, MIN_BATCH_SIZES, StealingLoss, stealing_loss
from encsteal.models import Encoder
from encsteal.target import Target, answered
from encsteal.training import EpochLoop, TrainContext, channels_last_cat, to_float_batch


def _prepare(features: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    return F.normalize(features, dim=1) if config.normalize_features else features


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Augmented floats -> the uint8 images an API receives."""
    return batch.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def bought_views(images: torch.Tensor, names: list[str], crop_scale: tuple[float, float], count: int, seed: int,
                 device: torch.device, batch_size: int = 1024) -> list[torch.Tensor]:
    """`count` augmented views of every uint8 image (seeded, so that a resumed run buys the same views again), as
    uint8 images to send to the target."""
    augment = build_augmentation(names, images.shape[-1], crop_scale).to(device)
    torch.manual_seed(seed * 7919 + 17)
    return [torch.cat([to_uint8(augment(to_float_batch(part, device))) for part in images.split(batch_size)])
            for _ in range(count)]


def objective(config: AttackConfig, loss_fn: StealingLoss, v: torch.Tensor, stolen_clean: torch.Tensor,
              v_views: list[torch.Tensor], stolen_views: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
    """Eq. 7 on one batch: w·d(v, f_s(x)) + (λ/k)·Σ_j d(v_j, f_s(A_j(x))), where v = f_t(x) and v_j is the
    feature bought for view j (query-aug) or v itself (StolenEncoder: f_t(A(x)) ≈ f_t(x))."""
    loss = config.clean_weight * loss_fn(v, stolen_clean, labels) if config.clean_weight else 0.0
    for v_j, stolen_j in zip(v_views, stolen_views, strict=True):
        loss = loss + (config.lam / len(stolen_views)) * loss_fn(v_j, stolen_j, labels)
    return loss


def _train(
    target_features: torch.Tensor,
    surrogate: torch.Tensor,
    config: AttackConfig,
    ctx: TrainContext,
    query_target: Target | None,
    labels: torch.Tensor | None,
    unbought: torch.Tensor | None = None,
    init: Encoder | None = None,
) -> Encoder:
    """The training loop shared by both variants; query_target is set only for query-aug."""
    device, dist = ctx.device, ctx.dist
    copy = start_copy(config, target_features.shape[1], init, unbought, ctx)
    extra = copy.extra
    views = config.views if config.lam > 0 else 0
    extra_images = 2 * extra.batch_size if extra is not None else 0
    loop = EpochLoop(ctx, copy.modules, copy.optimizer, {"attack": config.recipe()}, surrogate,
                     stage="steal", title=f"stealing ({config.arch})", epochs=config.epochs,
                     batch_size=config.batch_size, lr=config.lr, lr_schedule=config.lr_schedule,
                     images_per_step=config.batch_size * (1 + views) + extra_images)
    loss_fn = stealing_loss(config.loss, config.temperature)
    augment, model = copy.model(config, surrogate, ctx)
    for index in loop:
        x = to_float_batch(surrogate[index], device)
        augmented = [augment(x) for _ in range(views)]
        v = target_features[index].to(device)
        if query_target is not None:
            # query-aug: pay for f_t(A(x)) of every view, every epoch, and train on the images the target saw; a
            # view the provider refused to answer falls back on StolenEncoder's f_t(A(x)) ≈ f_t(x)
            v_views = [_prepare(query_target.embed(to_uint8(a)), config).to(device) for a in augmented]
            v_views = [torch.where(answered(v_j)[:, None], v_j, v) for v_j in v_views]
            augmented = [to_uint8(a).to(device).float().div_(255) for a in augmented]
        else:
            v_views = [v] * views
        pool_views = extra.views() if extra is not None else []
        # One forward pass over the clean batch and all its views (and the unbought images' two views): one graph,
        # k + 1 times the batch (under torchrun, this rank's slice of each, gathered back into the whole batch).
        with ctx.autocast():
            out = model(channels_last_cat([shard(t, dist) for t in (x, *augmented, *pool_views)])).float()
        if dist.active:
            out = torch.cat([gather(part, dist) for part in out.tensor_split(1 + views)])
        out, pool_out = out.split([len(x) * (1 + views), extra_images])
        stolen_clean, *stolen_views = _prepare(out, config).tensor_split(1 + views)
        y = labels[index].to(device) if labels is not None else None
        loss = objective(config, loss_fn, v, stolen_clean, v_views, stolen_views, y)
        if extra is not None:
            loss = loss + extra.loss(*pool_out.chunk(2))
        loop.step(loss)
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
          labels: torch.Tensor | None = None, *, unbought: torch.Tensor | None = None,
          init: Encoder | None = None) -> Encoder:
    """StolenEncoder: one query per surrogate image (uint8 N x 3 x H x W), and one per bought view
    (attack.bought_views), then minimise w·L1 + λ·L2. `labels` (one per image) are used only by label-using
    losses (supcon); `unbought` and `init` as in the module docstring."""
    _check(config, labels)
    if config.bought_views:
        views = bought_views(surrogate, config.bought_augment, config.bought_crop_scale, config.bought_views,
                             ctx.seed, ctx.device)
        surrogate = torch.cat([surrogate, *views])
        labels = None if labels is None else labels.repeat(1 + config.bought_views)
    features, surrogate, labels = keep_answered(_prepare(target.embed(surrogate), config), surrogate, labels)
    return _train(features, surrogate, config, ctx, query_target=None, labels=labels, unbought=unbought, init=init)


def steal_query_aug(target: Target, surrogate: torch.Tensor, config: AttackConfig, ctx: TrainContext,
                    labels: torch.Tensor | None = None, *, unbought: torch.Tensor | None = None,
                    init: Encoder | None = None) -> Encoder:
    """StolenEncoder-query-aug: also query the target on each epoch's augmented images."""
    _check(config, labels)
    if config.lam == 0:
        raise ConfigError("attack stolenencoder-query-aug queries augmented images, and attack.lam=0 has none: use attack.name=stolenencoder")
    if config.bought_views:
        raise ConfigError("attack.bought_views buys views once, for attack.name=stolenencoder; query-aug buys every "
                          "epoch's views already")
    features, surrogate, labels = keep_answered(_prepare(target.embed(surrogate), config), surrogate, labels)
    return _train(features, surrogate, config, ctx, query_target=target, labels=labels, unbought=unbought, init=init)
