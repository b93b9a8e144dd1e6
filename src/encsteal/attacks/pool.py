"""The attacker's pool: the unlabeled images it holds, of which it buys the target's features for some.

    buy_and_steal(steal, target, pool, labels, images, attack, surrogate, ctx=..., context=..., encoder_dir=...)

chooses `images` pool images to buy (`surrogate.selection`, encsteal.attacks.selection) and runs the attack on
them, handing it the unbought rest and the copy's starting weights:

- the attacker's own encoder of the pool (`pool_encoder`): SimCLR on every pool image with the copy's
  architecture, no query; kept in `encoder_dir` under a name made of its recipe (the pool's images, the SimCLR
  settings, the seed), so that every budget of a curve drawn from the same pool trains it once. It embeds the
  pool for the k-center and clusters selections and, with attack.init=pool-simclr, starts the copy;
- with surrogate.selection=uncertainty, the budget is bought in surrogate.rounds equal rounds: the first at
  random, each next one the unbought images the copy of the round before is least sure of (`uncertainty`); the
  copy trains attack.epochs / rounds epochs per round, each round starting from the last one's weights (with
  its own learning-rate schedule, a warm restart) on every image bought so far;
- `UnboughtTerm`: attack.unbought_weight · SimCLR's NT-Xent between two views of a batch of unbought images,
  through a projection head on the copy, added to an attack's loss at every step.

These run in one process: under torchrun they are refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from encsteal.attacks.selection import EMBEDDING_SELECTIONS, SELECTIONS
from encsteal.augment import build_augmentation
from encsteal.checkpoint import load_encoder, provenance, reusable, save_encoder
from encsteal.config import AttackConfig, ConfigError, PretrainConfig, SurrogateConfig
from encsteal.losses import nt_xent
from encsteal.models import Encoder, build_encoder
from encsteal.models.heads import ProjectionHead
from encsteal.pretrain import pretrain_simclr
from encsteal.target import Target
from encsteal.distributed import check_batch, wrap
from encsteal.training import TrainContext, channels_last, make_optimizer, tensor_digest, to_float_batch

UNCERTAINTY_VIEWS = 4
"""Augmented views per pool image in the copy's uncertainty score."""
HEAD_DIM = 128
"""The output width of the unbought term's projection head (SimCLR's)."""

Steal = Callable[..., Encoder]


def new_copy(config: AttackConfig, out_dim: int, init: Encoder | None) -> Encoder:
    """The copy to train: config.arch with an out_dim-wide output, randomly initialised (torch's global RNG), or
    starting from `init`: all its weights when it has the copy's shape (the copy of an earlier round), its
    backbone alone when it is the attacker's SimCLR encoder of the pool (whose output is the backbone's)."""
    copy = build_encoder(config.arch, config.stem, out_dim=out_dim)
    if init is None:
        return copy
    if (init.arch, init.stem) != (config.arch, config.stem):
        raise ConfigError(f"the copy ({config.arch}, {config.stem} stem) cannot start from a {init.arch} "
                          f"({init.stem} stem)")
    if init.feature_dim == out_dim and init.out_dim == out_dim:
        copy.load_state_dict(init.state_dict())
    else:
        copy.backbone.load_state_dict(init.backbone.state_dict())
    return copy


class UnboughtTerm:
    """μ · NT-Xent(h(f(A(u))), h(f(A'(u)))) on a batch of unbought pool images u per step: SimCLR's loss through a
    projection head h on the copy f, with the pool encoder's augmentations (attack.pool_simclr), so that the copy
    keeps learning from the images it did not buy while it distils the ones it did."""

    def __init__(self, unbought: torch.Tensor, config: AttackConfig, feature_dim: int, device: torch.device) -> None:
        self.unbought, self.weight, self.device = unbought, config.unbought_weight, device
        self.batch_size = min(config.batch_size, len(unbought))
        self.temperature = config.pool_simclr.temperature
        self.head = ProjectionHead(feature_dim, feature_dim, HEAD_DIM).to(device)
        self.augment = build_augmentation(config.pool_simclr.augment, unbought.shape[-1],
                                          color_strength=config.pool_simclr.color_strength).to(device)

    def views(self) -> list[torch.Tensor]:
        """Two augmented views of a random batch of unbought images (torch's global RNG, seeded per epoch)."""
        index = torch.randint(len(self.unbought), (self.batch_size,))
        u = to_float_batch(self.unbought[index], self.device)
        return list(self.augment(torch.cat([u, u])).chunk(2))

    def loss(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The weighted term from the copy's features of the two views."""
        return self.weight * nt_xent(self.head(first), self.head(second), self.temperature)


def unbought_term(unbought: torch.Tensor | None, config: AttackConfig, feature_dim: int,
                  device: torch.device) -> UnboughtTerm | None:
    """The term when the attack weighs it and there are unbought images; None otherwise."""
    if config.unbought_weight == 0:
        return None
    if unbought is None or len(unbought) < 2:
        raise ConfigError("attack.unbought_weight learns from the pool images left unbought, and there are none: set "
                          "surrogate.pool above the images the budget buys")
    return UnboughtTerm(unbought, config, feature_dim, device)


@dataclass
class CopyInTraining:
    """What a distilling attack trains: the copy, the unbought images' term (or None), the modules its state
    saves and the optimizer of all their parameters."""

    stolen: Encoder
    extra: UnboughtTerm | None
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer

    def model(self, config: AttackConfig, surrogate: torch.Tensor, ctx: TrainContext):
        """The views' augmentation and the copy as it trains (compiled if asked, data-parallel under torchrun),
        in training mode; checks that the batch splits over the processes."""
        augment = build_augmentation(config.augment, surrogate.shape[-1], config.crop_scale).to(ctx.device)
        check_batch(config.batch_size, len(surrogate), ctx.dist, "attack.batch_size")
        model = ctx.compiled(wrap(self.stolen, ctx.dist, ctx.device))
        model.train()
        return augment, model


def start_copy(config: AttackConfig, out_dim: int, init: Encoder | None, unbought: torch.Tensor | None,
               ctx: TrainContext) -> CopyInTraining:
    """The copy (`new_copy`, seeded by ctx.seed), its unbought term and its optimizer."""
    torch.manual_seed(ctx.seed)
    stolen = new_copy(config, out_dim, init).to(ctx.device).to(memory_format=torch.channels_last)
    extra = unbought_term(unbought, config, stolen.feature_dim, ctx.device)
    modules = {"stolen": stolen, **({"head": extra.head} if extra is not None else {})}
    parameters = [p for module in modules.values() for p in module.parameters()]
    optimizer = make_optimizer(config.optimizer, parameters, config.lr, config.weight_decay, config.momentum)
    return CopyInTraining(stolen, extra, modules, optimizer)


def pool_encoder(pool: torch.Tensor, config: AttackConfig, seed: int, encoder_dir: Path,
                 context: Callable[[str, dict], TrainContext]) -> Encoder:
    """The attacker's SimCLR encoder of its pool (config.pool_simclr, the copy's arch and stem), trained here or
    reused from `encoder_dir` where the same recipe made it before."""
    simclr = config.pool_simclr
    settings = PretrainConfig(method="simclr", arch=config.arch, stem=config.stem, epochs=simclr.epochs,
                              batch_size=min(simclr.batch_size, len(pool)), lr=simclr.lr, lr_schedule="cosine",
                              temperature=simclr.temperature, color_strength=simclr.color_strength,
                              augment=simclr.augment)
    recipe = {"pool_simclr": settings.recipe(), "pool": tensor_digest(pool), "seed": seed}
    name = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(encoder_dir) / f"pool-simclr-{name}.safetensors"
    ctx = context("pool-simclr", recipe)
    if reusable(path, recipe, "pool encoder"):
        return load_encoder(path, ctx.device)[0]
    encoder = pretrain_simclr(pool, settings, ctx)
    save_encoder(encoder, path, {"role": "pool-encoder", "recipe": recipe, "images": len(pool),
                                 "wall_seconds": ctx.seconds(), **provenance()})
    return encoder


@torch.inference_mode()
def embed(encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """The encoder's features of uint8 images, in eval mode, on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder(channels_last(to_float_batch(part, device))).float().cpu()
                     for part in images.split(batch_size)])
    encoder.train(was_training)
    return out


@torch.inference_mode()
def uncertainty(copy: nn.Module, images: torch.Tensor, augment: nn.Module, device: torch.device,
                views: int = UNCERTAINTY_VIEWS, batch_size: int = 512) -> torch.Tensor:
    """How unsure the copy is of each image: 1 − the mean cosine similarity between its features of the image
    and of `views` augmented views of it (seeded by the caller). A copy that has learned an image's kind gives
    its views nearly the image's own features; one that has not, scattered ones."""
    was_training = copy.training
    copy.eval()
    scores = []
    for part in images.split(batch_size):
        x = to_float_batch(part, device)
        clean = F.normalize(copy(channels_last(x)).float(), dim=1)
        similar = [F.cosine_similarity(clean, copy(channels_last(augment(x))).float(), dim=1) for _ in range(views)]
        scores.append(1 - torch.stack(similar).mean(dim=0).cpu())
    copy.train(was_training)
    return torch.cat(scores)


def _uses_pool(attack: AttackConfig, surrogate: SurrogateConfig) -> bool:
    return surrogate.selection != "random" or attack.init != "random" or attack.unbought_weight > 0


def buy_and_steal(steal: Steal, target: Target, pool: torch.Tensor, labels: torch.Tensor | None, images: int,
                  attack: AttackConfig, surrogate: SurrogateConfig, *, ctx: TrainContext,
                  context: Callable[[str, dict], TrainContext], encoder_dir: Path) -> tuple[Encoder, torch.Tensor]:
    """Choose `images` of the pool to buy, steal with them (and the unbought rest); returns the copy and the
    positions in the pool of the images bought. `ctx` is the steal stage's context; `context(stage, recipe)` gives
    the contexts of the pool encoder and of later rounds."""
    if ctx.dist.active and _uses_pool(attack, surrogate):
        raise ConfigError("surrogate.selection, attack.init=pool-simclr and attack.unbought_weight run in one "
                          "process: run without torchrun")
    needs_encoder = attack.init == "pool-simclr" or surrogate.selection in EMBEDDING_SELECTIONS
    encoder = pool_encoder(pool, attack, ctx.seed, encoder_dir, context) if needs_encoder else None
    init = encoder if attack.init == "pool-simclr" else None

    def run(bought: torch.Tensor, config: AttackConfig, round_ctx: TrainContext, start: Encoder | None) -> Encoder:
        rest = torch.ones(len(pool), dtype=torch.bool)
        rest[bought] = False
        unbought = pool[rest] if rest.any() else None
        return steal(target, pool[bought], config, round_ctx, labels=None if labels is None else labels[bought],
                     unbought=unbought, init=start)

    if surrogate.selection != "uncertainty" or surrogate.rounds == 1:
        embeddings = embed(encoder, pool, ctx.device) if surrogate.selection in EMBEDDING_SELECTIONS else None
        select = SELECTIONS["random" if surrogate.selection == "uncertainty" else surrogate.selection]
        bought = select(images, len(pool), embeddings=embeddings, seed=ctx.seed)
        return run(bought, attack, ctx, init), bought

    rounds = min(surrogate.rounds, images)
    bought = SELECTIONS["random"](images // rounds, len(pool))
    copy = init
    augment = build_augmentation(attack.augment, pool.shape[-1], attack.crop_scale).to(ctx.device)
    for number in range(rounds):
        epochs = attack.epochs * (number + 1) // rounds - attack.epochs * number // rounds
        round_config = attack.model_copy(update={"epochs": epochs})
        round_ctx = ctx if number == 0 else context(f"steal-round-{number}", {**ctx.recipe, "round": number})
        copy = run(bought, round_config, round_ctx, copy)
        if number + 1 < rounds:
            torch.manual_seed(ctx.seed * 1009 + number)  # the views of the uncertainty score
            scores = uncertainty(copy, pool, augment, ctx.device)
            more = images * (number + 2) // rounds - len(bought)
            bought = torch.cat([bought, SELECTIONS["uncertainty"](more, len(pool), chosen=bought, scores=scores)])
    return copy, bought
