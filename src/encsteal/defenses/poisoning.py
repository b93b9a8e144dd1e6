"""Feature poisoning (StolenEncoder §VII-C, Eq. 10): return f_t(x) + δ with

    δ = argmax_δ  d(f_t(x) + δ, f's(x)) + λ · d(f_t(x) + δ, f's(A(x)))   s.t.  ‖δ‖_p ≤ ε,   p ∈ {2, ∞}

where f's is the provider's own *shadow* stolen encoder, trained with the attacker's settings (d, λ, A) on the
provider's pre-training data — the paper's strong defender. The maximum of this convex function lies on the
ball's surface; it is found by projected gradient ascent (normalised steps for p = 2, signed steps for p = ∞).
A(x) is drawn per image from a generator seeded by its pixels, so the same image is always poisoned alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from encsteal.augment import build_augmentation
from encsteal.defenses.seeding import image_seeds
from encsteal.defenses.settings import DefenseSettings
from encsteal.losses import DISTANCES


class PoisoningConfig(DefenseSettings):
    name: Literal["poisoning"] = "poisoning"
    epsilon: float = Field(gt=0)
    """Bound on ‖δ‖_p (the paper: 1-10 for p = 2, 0.01-0.1 for p = ∞)."""
    norm: Literal["2", "inf"] = "2"
    shadow: Path | None = None
    """The shadow stolen encoder (.safetensors). A run trains one into its run directory when this is empty."""
    shadow_images: int | None = Field(None, ge=1)
    """Pre-training images the provider steals its own encoder with (None: all of them, as in the paper)."""
    distance: str = "l2"
    lam: float = Field(20.0, ge=0)
    augment: list[str] = ["horizontal_flip", "color_jitter", "grayscale"]
    steps: int = Field(10, ge=1)
    secret: int = Field(0, ge=-(2**63), lt=2**63)
    """The provider's seed of the per-image draws: keep it private, and draw a random 63-bit one in a deployment
    (`python -c "import secrets; print(secrets.randbits(63))"`). Reports show it as ***."""

    @field_validator("norm", mode="before")
    @classmethod
    def _norm_as_text(cls, value):
        return str(value)  # `norm=2` arrives as an integer from YAML


class FeaturePoisoning:
    def __init__(self, config: PoisoningConfig, device: torch.device, image_size: int) -> None:
        from encsteal.checkpoint import load_encoder

        if config.shadow is None:
            raise ValueError("the poisoning defense needs its shadow stolen encoder: set shadow=PATH.safetensors")
        if config.distance not in DISTANCES:
            raise ValueError(f"unknown distance '{config.distance}' (known: {', '.join(DISTANCES)})")
        self.config = config
        self.shadow, _ = load_encoder(config.shadow, device)
        self.augment = build_augmentation(config.augment, image_size).to(device)
        self.distance = DISTANCES[config.distance]

    def _augmented(self, images: torch.Tensor) -> torch.Tensor:
        views = []
        for image, seed in zip(images, image_seeds(images, self.config.secret)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                views.append(self.augment(image.unsqueeze(0)))
        return torch.cat(views)

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        eps = self.config.epsilon
        if self.config.norm == "inf":
            return delta.clamp(-eps, eps)
        return delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(eps))

    def __call__(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        with torch.inference_mode():
            clean = self.shadow(images).float()
            augmented = self.shadow(self._augmented(images)).float() if cfg.lam > 0 else None
        step = 2.5 * cfg.epsilon / cfg.steps
        # The served encoder runs under inference_mode; the ascent needs autograd on copies made outside it.
        with torch.inference_mode(False), torch.enable_grad():
            target, clean = features.float().clone(), clean.clone()
            augmented = augmented.clone() if augmented is not None else None
            # Start a small step along the ascent direction of the squared distances: at δ = 0 the gradient of
            # a norm is undefined wherever f_t(x) = f's(x). (Per image, so batching does not change answers.)
            direction = target - clean + (cfg.lam * (target - augmented) if augmented is not None else 0) + 1e-6
            delta = self._project(1e-3 * cfg.epsilon * direction / direction.norm(dim=1, keepdim=True))
            for _ in range(cfg.steps):
                delta = delta.detach().requires_grad_(True)
                poisoned = target + delta
                loss = self.distance(poisoned, clean)
                if augmented is not None:
                    loss = loss + cfg.lam * self.distance(poisoned, augmented)
                (grad,) = torch.autograd.grad(loss, delta)
                if cfg.norm == "inf":
                    ascent = grad.sign()
                else:
                    ascent = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = self._project(delta + step * ascent)
        return (target + delta.detach()).to(features.dtype)
