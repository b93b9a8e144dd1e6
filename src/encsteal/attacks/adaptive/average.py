"""Averaging noise away with near-duplicate queries.

The noise defense and B4B draw their noise from the image's pixels (and the provider's secret and the account), so
that asking an image twice gives the same draw. An image moved by a pixel or two is another image to the seed and
the same image to the encoder: the attacker asks r near-duplicates x_1 = x, x_j = clip(x + u_j), u_j uniform in
[−jitter, jitter] per pixel, and trains on the mean of the answers,

    v(x) = 1/r Σ_j f̃(x_j) = f(x) + 1/r Σ_j σ·rms·ε_j + (f's change under u_j, small)

whose noise has 1/√r of the answers' standard deviation. It pays r queries per image. Near-duplicates fall into
the buckets of the image itself, so B4B's coverage, and with it its noise, grows as with one query per image.
Above the query cache: the near-duplicates' answers are cached as any answer.
"""

from __future__ import annotations

import torch

from encsteal.target import Target


def near_duplicates(images: torch.Tensor, repeats: int, jitter: int, seed: int) -> list[torch.Tensor]:
    """`repeats` versions of every uint8 image, the first unchanged, the others each pixel moved by at most
    `jitter`; the draw is seeded by `seed` and the images' own bytes, so the same image always gets the same copies."""
    copies = [images]
    for index in range(1, repeats):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        shift = torch.randint(-jitter, jitter + 1, images.shape, generator=generator, dtype=torch.int16)
        moved = (images.to(torch.int16) + shift).clamp(0, 255).to(torch.uint8)
        unchanged = (moved == images).flatten(1).all(dim=1)  # a copy equal to the image would be the same query
        moved[unchanged, 0, 0, 0] ^= 1
        copies.append(moved)
    return copies


class AveragingTarget:
    """Each image asked `repeats` times as near-duplicates; the answers averaged (over those answered, when the
    provider refused the attacker before it had them all: NaN rows, Target.embed)."""

    def __init__(self, target: Target, repeats: int, jitter: int, seed: int = 0) -> None:
        self.target, self.repeats, self.jitter, self.seed = target, repeats, jitter, seed

    @property
    def queries(self) -> int:
        return self.target.queries

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        copies = near_duplicates(images, self.repeats, self.jitter, self.seed)
        answers = self.target.embed(torch.cat(copies))
        return answers.view(self.repeats, len(images), -1).nanmean(dim=0)
