"""The rotation watermark (Dziedzic et al., "On the Difficulty of Defending Self-Supervised Learning against
Model Extraction", ICML 2022; the slides' "Embed Rotation Task to Defend Encoders").

While the provider pre-trains, a secret head g learns to tell from the encoder's representation f(x) by how
much a watermark image was rotated, and the encoder learns with it: every step adds

    L_wm = w · CE(g(f(rot_r(x))), r),   x a watermark image, r ∈ {0°, 90°, 180°, 270°} drawn at random

to the self-supervised loss. A copy trained to reproduce f's representations carries the task along; an
independent encoder does not. Verification sends the watermark images, each in the four rotations, to the
suspect, maps its representations into the victim's space (`fit_alignment`, on public images only, so that a
shuffled, padded or linearly transformed copy is read like the bare one), reads them with g, and compares the
accuracy with what independent reference encoders reach through the same steps (`reference_test`).

Secret: the seed (pretrain.watermark_seed) chooses the watermark images among the pre-training images and
initialises g; images, head and seed are saved beside the target's checkpoint (`save_watermark`,
<stem>.watermark.safetensors), never served.

Departures from the official code (cleverhans-lab/ssl-attacks-defenses: watermark.py, simclr.py,
data_aug/contrastive_learning_dataset.py WatermarkDataset, models/resnet_simclr.py WatermarkMLP), which
trains two classes, rotations drawn from (0°, 180°) against (180°, 360°), in one extra pass over the
watermark set after each epoch, and leaves the head out of the optimizer (it keeps its random
initialisation; the encoder alone learns to serve it): here four exact quarter turns (torch.rot90: no
interpolation, no black corners, a quarter chance level instead of a half), a small watermark batch in every
step of the same optimizer, head and encoder both trained. The head is the code's MLP (D-256-128-classes).
The code reports the head's accuracy on the suspect; the p-value against reference encoders is ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from scipy import stats
from torch import nn

from encsteal.config import Section
from encsteal.errors import EncstealError
from encsteal.training import channels_last, to_float_batch

ROTATIONS = 4
"""Quarter turns: class r is a rotation by r · 90°."""


class WatermarkError(EncstealError):
    pass


def rotate(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Each image N x C x H x W (square) turned counter-clockwise by classes[i] quarter turns."""
    out = images.clone()
    for turns in range(1, ROTATIONS):
        chosen = classes == turns
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], turns, dims=(2, 3))
    return out


def all_rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in every rotation: (N·4 images, their classes), image-major."""
    classes = torch.arange(ROTATIONS).repeat(len(images))
    return rotate(images.repeat_interleave(ROTATIONS, dim=0), classes), classes


class WatermarkHead(nn.Sequential):
    """The official WatermarkMLP: Linear(D, 256) - ReLU - Linear(256, 128) - ReLU - Linear(128, classes)."""

    def __init__(self, feature_dim: int, classes: int = ROTATIONS) -> None:
        super().__init__(nn.Linear(feature_dim, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, classes))


class RotationWatermark(nn.Module):
    """The pre-training side: the watermark images and the head, called with the encoder once per step for
    the extra loss term. Its batches come from its own generator (secret seed, step), so the pre-training's
    own random stream is the same with and without a watermark, and a resumed run draws what it would have."""

    def __init__(self, images: torch.Tensor, indices: torch.Tensor, feature_dim: int, seed: int, weight: float,
                 batch_size: int) -> None:
        super().__init__()
        self.seed, self.weight, self.batch_size = seed, weight, batch_size
        self.register_buffer("images", images.contiguous())
        self.register_buffer("indices", indices.clone())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = WatermarkHead(feature_dim)

    def forward(self, encoder: nn.Module) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        chosen = torch.randint(len(self.images), (self.batch_size,), generator=generator)
        classes = torch.randint(ROTATIONS, (self.batch_size,), generator=generator)
        device = self.images.device
        x = to_float_batch(rotate(self.images[chosen.to(device)], classes.to(device)), device)
        self.step += 1
        logits = self.head(encoder(channels_last(x)))
        return self.weight * F.cross_entropy(logits.float(), classes.to(device))


def create_watermark(pretraining_images: torch.Tensor, count: int, seed: int, feature_dim: int, weight: float,
                     batch_size: int) -> RotationWatermark:
    """`count` of the pre-training images, chosen by the secret seed, and a head seeded by it."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(pretraining_images), generator=generator)[:count]
    return RotationWatermark(pretraining_images[indices], indices, feature_dim, seed, weight,
                             max(2, batch_size // 4))


def watermark_for(config, images: torch.Tensor, device: torch.device) -> RotationWatermark | None:
    """The watermark a PretrainConfig asks for (None if none), on `device`, for pre-training on `images`."""
    if config.watermark is None:
        return None
    from encsteal.models import build_encoder

    with torch.random.fork_rng(devices=[]):  # the throwaway encoder tells the width without touching the seed
        feature_dim = build_encoder(config.arch, config.stem).feature_dim
    return create_watermark(images, config.watermark_images, config.watermark_seed, feature_dim,
                            config.watermark_weight, config.batch_size).to(device)


@torch.inference_mode()
def embedded_accuracy(watermark: RotationWatermark, encoder: nn.Module, batch_size: int = 512) -> float:
    """The head's accuracy on the encoder's representations of every watermark image in every rotation."""
    encoder.eval()
    images, classes = all_rotations(watermark.images.cpu())
    device = next(encoder.parameters()).device
    features = torch.cat([encoder(channels_last(to_float_batch(chunk, device))).float().cpu()
                          for chunk in images.split(batch_size)])
    return head_accuracy(watermark.head, features, classes)


@torch.inference_mode()
def head_accuracy(head: nn.Module, features: torch.Tensor, classes: torch.Tensor) -> float:
    head = head.eval().cpu()
    return float((head(features.float().cpu()).argmax(1) == classes.cpu()).float().mean())


# --------------------------------------------------------------------------------------------------
# The artefact beside the checkpoint


def watermark_path(checkpoint: Path) -> Path:
    """Where a target's watermark is kept: target.safetensors -> target.watermark.safetensors."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.watermark.safetensors")


@dataclass
class Watermark:
    """What verification needs: the head, the watermark images, and how they were made."""

    head: WatermarkHead
    images: torch.Tensor
    meta: dict


def save_watermark(watermark: RotationWatermark, path: Path, meta: dict) -> Path:
    """Head weights, images and meta in one safetensors file (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{name}": tensor.detach().cpu().contiguous() for name, tensor in watermark.head.state_dict().items()}
    tensors["images"] = watermark.images.cpu().contiguous()
    tensors["indices"] = watermark.indices.cpu().contiguous()
    record = {"kind": "rotation", "rotations": ROTATIONS, "seed": watermark.seed, "weight": watermark.weight,
              "feature_dim": watermark.head[0].in_features, **meta}
    tmp = path.with_name(f"{path.name}.tmp")
    save_file(tensors, tmp, metadata={"watermark": json.dumps(record, default=str)})
    tmp.replace(path)
    return path


def load_watermark(path: Path) -> Watermark:
    path = Path(path)
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as handle:
            meta = json.loads((handle.metadata() or {})["watermark"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise WatermarkError(f"{path} is not a readable watermark file ({exc})") from None
    head = WatermarkHead(meta["feature_dim"], meta["rotations"])
    head.load_state_dict({name.removeprefix("head."): t for name, t in tensors.items() if name.startswith("head.")})
    return Watermark(head.eval(), tensors["images"], meta)


# --------------------------------------------------------------------------------------------------
# Verification


class WatermarkVerifyConfig(Section):
    """How the rotation watermark is verified on a suspect."""

    images: int = Field(100, ge=1)
    """Watermark images sent to the suspect, each in the four rotations (4 queries per image)."""
    align: Literal["lstsq", "procrustes", "none"] = "lstsq"
    """How the suspect's representations are mapped into the victim's before the head: lstsq, a ridge least-squares
    affine map (undoes shuffling, padding and any invertible linear transform); procrustes, a scaled orthogonal map
    (shuffling and padding, not a general linear transform); none, the suspect's representations as they are (they
    must then have the victim's width). Fitted on the public images only."""
    ridge: float = Field(0.3, ge=0)
    """lstsq: the ridge penalty, as a share of each standardised feature's variance. A strong one keeps the map from
    fitting an independent encoder's features, from upright images alone, into the victim's rotation code (at 0.01 an
    independent encoder trained on the same data read 42 % of the rotations, at 0.3 26 %, chance 25 %); a copy, whose
    representations already lie near the victim's, needs little of the map (63 % at both). Chosen on one copy and one
    independent encoder of the demo's watermarked target before the measured sweeps."""
    random_references: int = Field(8, ge=0)
    """Random-init encoders of the victim's architecture among the reference encoders."""
    references: list[Path] = []
    """Checkpoints of encoders known to be independent of the victim (trained on other data): with the random inits,
    what an independent encoder reaches defines the null distribution."""


def fit_alignment(suspect: torch.Tensor, victim: torch.Tensor, method: str, ridge: float):
    """A map from the suspect's representation space into the victim's, fitted on the two encoders'
    representations of the same public images (rows). Returns a function of suspect representations."""
    s, v = suspect.double(), victim.double()
    if method == "none":
        if s.shape[1] != v.shape[1]:
            raise WatermarkError(f"the suspect's representations have {s.shape[1]} dimensions and the victim's "
                                 f"{v.shape[1]}: align them (watermark.align=lstsq)")
        return lambda features: features.double()
    s_mean, v_mean = s.mean(0), v.mean(0)
    if method == "lstsq":
        # standardised so that one ridge penalty suits every dimension; constant (padded) dimensions drop out
        s_std = s.std(0)
        s_std = torch.where(s_std > 1e-8 * s_std.max().clamp_min(1e-30), s_std, torch.inf)
        z = (s - s_mean) / s_std
        gram = z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
        weights = torch.linalg.solve(gram, z.T @ (v - v_mean))
        return lambda features: ((features.double() - s_mean) / s_std) @ weights + v_mean
    if method == "procrustes":
        # orthogonal Procrustes (Schönemann 1966) with one scale: min ||c·(S − s̄) Q − (V − v̄)|| over QᵀQ = I
        centred = s - s_mean
        u, sigma, wt = torch.linalg.svd(centred.T @ (v - v_mean), full_matrices=False)
        rotation, scale = u @ wt, sigma.sum() / (centred * centred).sum()
        return lambda features: scale * (features.double() - s_mean) @ rotation + v_mean
    raise WatermarkError(f"unknown alignment '{method}' (lstsq, procrustes or none)")


def reference_test(accuracy: float, references: list[float], images: int) -> tuple[float, float]:
    """(t, p) of the suspect's watermark accuracy against the reference encoders': a one-sided prediction test,
    H0 the suspect is one more draw from the references' distribution,

        t = (a − ā) / √((s² + ā(1 − ā)/n) · (1 + 1/K)),   p = P(T_{K−1} ≥ t),

    with ā, s the K references' mean and standard deviation and ā(1 − ā)/n the sampling variance of an accuracy
    measured on n images, which keeps t finite when the references agree exactly."""
    if len(references) < 2:
        raise WatermarkError("the watermark's null distribution needs at least two reference encoders "
                             "(watermark.random_references or watermark.references)")
    refs = np.asarray(references, dtype=float)
    mean, spread = refs.mean(), refs.std(ddof=1)
    variance = spread**2 + max(mean * (1 - mean), 1 / images) / images
    t = (accuracy - mean) / np.sqrt(variance * (1 + 1 / len(refs)))
    return float(t), float(stats.t.sf(t, df=len(refs) - 1))


__all__ = ["ROTATIONS", "RotationWatermark", "Watermark", "WatermarkError", "WatermarkHead", "WatermarkVerifyConfig",
           "all_rotations", "create_watermark", "embedded_accuracy", "fit_alignment", "head_accuracy", "load_watermark", "reference_test",
           "rotate", "save_watermark", "watermark_for", "watermark_path"]
