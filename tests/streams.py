"""Query streams for detection tests: natural-looking images, and a crafted stream of the kind PRADA catches."""

import torch


def natural(n: int, seed: int) -> torch.Tensor:
    """Smooth random images: blobs at random places (a stand-in for natural images in a small test)."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, 32)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    centers = torch.rand(n, 3, 2, generator=generator) * 2 - 1
    widths = 0.2 + 0.5 * torch.rand(n, 3, 1, 1, generator=generator)
    blobs = torch.exp(-((x - centers[..., 0, None, None]) ** 2 + (y - centers[..., 1, None, None]) ** 2) / widths**2)
    return (blobs * 255).round().to(torch.uint8)


def synthetic(n: int, seed: int) -> torch.Tensor:
    """A crafted stream: a few seed images and many small perturbations of them (JbDA-style, PRADA's case)."""
    generator = torch.Generator().manual_seed(seed)
    seeds = natural(5, seed).float()
    picks = torch.randint(0, 5, (n,), generator=generator)
    steps = torch.randint(0, 3, (n, 1, 1, 1), generator=generator).float() * 6
    noise = torch.sign(torch.randn(n, 3, 32, 32, generator=generator))
    return (seeds[picks] + steps * noise).clamp(0, 255).round().to(torch.uint8)
