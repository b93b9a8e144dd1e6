"""What an attacker may do to a stolen copy before serving or selling it, so that ownership verification is tested
against it (the slides' "Ownership Resolution": "(1) Shuffle the elements in the representation vectors, (2) Pad
with or add constant values at random positions, and (3) Apply a linear Transform"; fine-tuning and pruning are
the usual further ones).

    shuffle   f'(x) = P f(x), P a random permutation of the dimensions
    pad       f'(x) = f(x) with `pad` constant dimensions inserted at random positions
    linear    f'(x) = A f(x), A = U diag(s) Vᵀ with random orthogonal U, V and s in [0.5, 2] (invertible, condition ≤ 4)
    finetune  a few epochs of SimCLR on the copy's own surrogate images, from the copy's weights
    prune     the smallest-magnitude share of all convolution and linear weights set to zero (global magnitude pruning)

The first three are folded into the encoder's final linear layer (one is added where it has none), and pruning
and fine-tuning change weights in place, so every obfuscated copy is an ordinary encoder checkpoint: it loads with
`encsteal.checkpoint.load_encoder` and serves with `encsteal serve`, exactly as the attacker would offer it.

How verification copes (`encsteal.ownership.verify`): dataset inference fits its density on each suspect's own
representations, so a permutation or a padding leaves the diagonal mixture's likelihoods unchanged (up to the
padded dimensions' constant term and the L2 normalisation) and a linear map changes only the shape the mixture
has to fit; the watermark head reads the suspect's representations after an affine map into the victim's space
fitted on public images, which undoes shuffle, pad and linear exactly and fine-tuning and pruning in part.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import prune as torch_prune

from encsteal.augment import build_augmentation
from encsteal.checkpoint import load_encoder, read_sidecar, save_encoder
from encsteal.config import Section
from encsteal.data import load_dataset
from encsteal.errors import EncstealError
from encsteal.losses import nt_xent
from encsteal.models import Encoder, build_encoder
from encsteal.models.heads import ProjectionHead
from encsteal.training import channels_last, make_optimizer, minibatches, to_float_batch

Kind = Literal["none", "shuffle", "pad", "linear", "finetune", "prune"]


class ObfuscationError(EncstealError):
    pass


class ObfuscationConfig(Section):
    kind: Kind = "none"
    seed: int = 0
    """Draws the permutation, the padded positions and constants, the linear map, fine-tuning's batches."""
    pad: int = Field(64, ge=1)
    """pad: constant dimensions inserted."""
    prune: float = Field(0.5, gt=0, lt=1)
    """prune: the share of convolution and linear weights set to zero."""
    finetune_epochs: int = Field(5, ge=1)
    finetune_lr: float = Field(1e-3, gt=0)
    finetune_batch_size: int = Field(256, ge=2)
    finetune_temperature: float = Field(0.5, gt=0)

    def label(self) -> str:
        return self.kind


def with_output_map(encoder: Encoder, weight: torch.Tensor, bias: torch.Tensor) -> Encoder:
    """A new encoder computing weight @ encoder(x) + bias, the map folded into its final linear layer."""
    old = encoder.projection
    if isinstance(old, nn.Linear):
        new_weight, new_bias = weight @ old.weight.detach(), weight @ old.bias.detach() + bias
    else:
        new_weight, new_bias = weight, bias
    folded = build_encoder(encoder.arch, encoder.stem, out_dim=weight.shape[0])
    state = {name: tensor for name, tensor in encoder.state_dict().items() if not name.startswith("projection.")}
    folded.load_state_dict({**state, "projection.weight": new_weight.float(), "projection.bias": new_bias.float()})
    return folded.to(next(encoder.parameters()).device).eval()


def shuffle(encoder: Encoder, config: ObfuscationConfig, generator: torch.Generator) -> Encoder:
    permutation = torch.randperm(encoder.feature_dim, generator=generator)
    return with_output_map(encoder, torch.eye(encoder.feature_dim)[permutation], torch.zeros(encoder.feature_dim))


def pad(encoder: Encoder, config: ObfuscationConfig, generator: torch.Generator) -> Encoder:
    width = encoder.feature_dim + config.pad
    padded = torch.zeros(width, dtype=torch.bool)
    padded[torch.randperm(width, generator=generator)[: config.pad]] = True
    weight = torch.zeros(width, encoder.feature_dim)
    weight[~padded] = torch.eye(encoder.feature_dim)
    bias = torch.zeros(width)
    bias[padded] = torch.randn(config.pad, generator=generator)
    return with_output_map(encoder, weight, bias)


def random_orthogonal(size: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed (Mezzadri 2007)


def linear(encoder: Encoder, config: ObfuscationConfig, generator: torch.Generator) -> Encoder:
    d = encoder.feature_dim
    scales = 2.0 ** (2 * torch.rand(d, generator=generator, dtype=torch.float64) - 1)  # in [0.5, 2]
    transform = random_orthogonal(d, generator) @ torch.diag(scales) @ random_orthogonal(d, generator).T
    return with_output_map(encoder, transform.float(), torch.zeros(d))


def prune(encoder: Encoder, config: ObfuscationConfig, generator: torch.Generator) -> Encoder:
    pruned = copy.deepcopy(encoder)
    layers = [(module, "weight") for module in pruned.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=config.prune)
    for module, name in layers:
        torch_prune.remove(module, name)  # the zeros become the weights themselves
    return pruned.eval()


def finetune(encoder: Encoder, config: ObfuscationConfig, generator: torch.Generator,
             surrogate: torch.Tensor | None = None) -> Encoder:
    """SimCLR (NT-Xent on two augmented views, a fresh projection head) on the surrogate images, from the copy."""
    if surrogate is None or len(surrogate) < 2:
        raise ObfuscationError("fine-tuning needs the copy's surrogate images (the stolen checkpoint records them)")
    device = next(encoder.parameters()).device
    tuned = copy.deepcopy(encoder).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = ProjectionHead(tuned.feature_dim, tuned.feature_dim, 128).to(device)
        optimizer = make_optimizer("adam", [*tuned.parameters(), *head.parameters()], config.finetune_lr)
        augment = build_augmentation(["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"],
                                     surrogate.shape[-1]).to(device)
        batch_size = min(config.finetune_batch_size, len(surrogate))
        for _ in range(config.finetune_epochs):
            for index in minibatches(len(surrogate), batch_size, generator):
                x = to_float_batch(surrogate[index], device)
                first, second = augment(torch.cat([x, x])).chunk(2)
                loss = nt_xent(head(tuned(channels_last(first))), head(tuned(channels_last(second))),
                               config.finetune_temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return tuned.eval()


OBFUSCATIONS = {
    "shuffle": shuffle,
    "pad": pad,
    "linear": linear,
    "finetune": finetune,
    "prune": prune,
}
"""kind -> function(encoder, config, generator[, surrogate]) -> a new obfuscated encoder."""


def obfuscate(encoder: Encoder, config: ObfuscationConfig, surrogate: torch.Tensor | None = None) -> Encoder:
    """The obfuscated copy (a new encoder; `encoder` is left as it is). `surrogate` is needed by finetune only."""
    if config.kind == "none":
        return encoder
    generator = torch.Generator().manual_seed(config.seed)
    if config.kind == "finetune":
        return finetune(encoder, config, generator, surrogate)
    return OBFUSCATIONS[config.kind](encoder, config, generator)


def surrogate_of(checkpoint: Path, root: Path, image_size: int) -> torch.Tensor | None:
    """The surrogate images a stolen checkpoint's sidecar records (None if it records none)."""
    record = read_sidecar(checkpoint).get("surrogate")
    if not record or "indices" not in record:
        return None
    images = load_dataset(record["dataset"], record["split"], root=root, image_size=image_size).images
    return images[torch.as_tensor(record["indices"], dtype=torch.long)]


def obfuscate_checkpoint(checkpoint: Path, config: ObfuscationConfig, out: Path, *, root: Path,
                         device: str | torch.device = "cpu") -> Path:
    """Write the obfuscated copy of `checkpoint` to `out` (an ordinary encoder checkpoint); reused when `out`
    already holds the same obfuscation of the same weights."""
    out = Path(out)
    meta = read_sidecar(checkpoint)
    recipe = {"of": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
              "obfuscation": config.model_dump(mode="json")}
    if out.exists() and out.with_suffix(".json").exists() and read_sidecar(out).get("recipe") == recipe:
        return out
    encoder, _ = load_encoder(checkpoint, device)
    image_size = meta.get("image_size", 32)
    surrogate = surrogate_of(checkpoint, root, image_size) if config.kind == "finetune" else None
    obfuscated = obfuscate(encoder, config, surrogate)
    kept = {key: meta[key] for key in ("role", "image_size", "surrogate") if key in meta}
    return save_encoder(obfuscated, out, {**kept, "recipe": recipe, "obfuscation": config.kind})


__all__ = ["OBFUSCATIONS", "ObfuscationConfig", "ObfuscationError", "obfuscate", "obfuscate_checkpoint",
           "random_orthogonal", "surrogate_of", "with_output_map"]
