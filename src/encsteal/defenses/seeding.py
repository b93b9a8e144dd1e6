"""Per-image seeds, so that a randomised defense answers the same image the same way every time."""

from __future__ import annotations

import hashlib

import torch


def image_seeds(images: torch.Tensor, secret: int) -> list[int]:
    """One 63-bit seed per image, from its pixels (as quantised to 8 bits) and the provider's secret."""
    pixels = images.detach().mul(255).round().to(torch.uint8).cpu().contiguous()
    key = secret.to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.sha256(key + image.numpy().tobytes()).digest()[:8], "little") >> 1 for image in pixels]
