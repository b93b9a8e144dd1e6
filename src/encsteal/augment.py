"""Batched, per-sample augmentations on float image tensors in [0, 1], one place for all of them.

Names, parameters and their numbers in StolenEncoder Table VIII (the SimCLR set):

    1 random_resized_crop   scale (0.2, 1.0), back to image_size x image_size
    2 horizontal_flip       p 0.5
    3 color_jitter          brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1, p 0.8 (torchvision's formulas):
                            SimCLR's colour distortion at strength s = 0.5, which `color_strength` changes
    4 grayscale             p 0.2

A pipeline applies its operations in this canonical order, whatever order they are listed in. Each image of
a batch draws its own parameters from torch's global generator, so ``torch.manual_seed`` reproduces them.

The crop is kornia's RandomResizedCrop (its box sampling, its transform matrix for inverse()), applied as one
separable grid_sample for the whole batch where kornia solves a perspective transform per image. Flip,
colour jitter and grayscale work on the chosen images only, where kornia transforms all of them and blends;
the colour steps work in place, and the hue step in closed form on RGB, where kornia converts to HSV and back.
Tests check each against kornia's output for the same parameters. On 2 CPU cores the four ops take about a fifth
of the time of kornia's own classes (benchmarks/augmentation.py), which brings the demo's small encoder close
to its raw training speed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

_LUMA = torch.tensor([0.299, 0.587, 0.114])
"""The grayscale weights of R, G and B (ITU-R 601), as in torchvision and kornia."""

_COLOUR_CHUNK = 128
"""Images per slice in the colour jitter: 1.5-2x faster than whole 512-image batches on a 2-core CPU."""

_HEXTANTS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
"""Where red, green and blue sit on the hue hexagon, read backwards (HSV -> RGB: channel n = V - C T(h + n))."""


def _per_image(factor: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return factor.to(images).view(-1, 1, 1, 1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma of N x 3 x H x W RGB images."""
    return (images * _LUMA.to(images).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def adjust_brightness_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: x <- clamp(f x, 0, 1), one factor f per image (torchvision's adjust_brightness)."""
    return images.mul_(_per_image(factor, images)).clamp_(0, 1)


def adjust_contrast_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: x <- clamp(f x + (1 - f) m, 0, 1), m the image's mean luma (torchvision's adjust_contrast).
    The mean luma is the luma of the mean colour, so no gray image is made."""
    mean = images.mean(dim=(2, 3)) @ _LUMA.to(images)
    factor = _per_image(factor, images)
    return images.mul_(factor).add_((1 - factor) * mean.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_saturation_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: x <- clamp(f x + (1 - f) gray(x), 0, 1) (torchvision's adjust_saturation)."""
    factor = _per_image(factor, images)
    gray = _gray(images).mul_(1 - factor)
    return images.mul_(factor).add_(gray).clamp_(0, 1)


def adjust_hue_(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images in [0, 1] (N x 3 x H x W) by `turns` (N, a fraction of the circle),
    keeping value V = max(R, G, B) and chroma C = V - min(R, G, B): torchvision's adjust_hue (kornia's
    adjust_hue with 2π turns) without the round trip through HSV. Writes the result into `images`.

    Hue in sixths of the circle: h = (G - B)/C where R is the largest, (B - R)/C + 2 where G is, (R - G)/C + 4
    where B is (ties go to the first of R, G, B, as in HSV's definition and kornia's rgb_to_hsv). Back to RGB
    at h' = h + 6 turns: channel n in (R, G, B) is V - C T(h' + (5, 3, 1)_n), where T is the trapezoid of
    period 6 that rises from 0 to 1 over [0, 1], stays 1 to 3 and falls back to 0 at 4. Gray pixels (C = 0)
    come back unchanged.

    Only float arithmetic, no comparisons, masks or `where`: on a CPU those run several times slower than
    an add. Which channel is the largest comes from sign(V - R) and sign(V - G), each 0 or 1."""
    red, green, blue = images.unbind(1)
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    not_red, not_green = torch.sign(value - red), torch.sign(value - green)  # 0 where that channel is the largest
    # C h = (G - B) + [R not largest] ((B - R + 2C) - (G - B) + [G not largest] ((R - G + 4C) - (B - R + 2C)));
    # with Q = 2C - (R + G + B) the two brackets are 3B + Q and 3R + Q
    q = chroma.mul(2).sub_(images.sum(dim=1))
    inner = torch.addcmul(torch.add(q, blue, alpha=3), not_green, torch.add(q, red, alpha=3))
    hue = torch.addcmul(green - blue, not_red, inner).div_(chroma.clamp_min(torch.finfo(images.dtype).tiny))
    # T(u) = clamp(2 - |w|, 0, 1) with w = ((u + 1) mod 6) - 3 in [-3, 3): mod as y - 6 floor(y / 6)
    shift = 6 * turns.to(images).view(-1, 1, 1, 1) + _HEXTANTS.to(images) + 1
    y = hue.unsqueeze(1) + shift  # N x 3 x H x W
    y = y.sub_(torch.floor(y / 6).mul_(6)).sub_(3).abs_()
    trapezoid = y.neg_().add_(2).clamp_(0, 1)
    return torch.sub(value.unsqueeze(1), trapezoid.mul_(chroma.unsqueeze(1)), out=images)


class RandomResizedCrop(K.RandomResizedCrop):
    """kornia's RandomResizedCrop (its box sampling, its transform matrix), each box cut and resized by one
    batched grid_sample (bilinear, corners aligned, as kornia does it)."""

    @staticmethod
    def _corners(params: dict[str, torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each box's top-left and bottom-right corners (x, y), N x 2 each, in input pixels."""
        return params["src"][:, 0].to(like), params["src"][:, 2].to(like)

    def compute_transformation(self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any]) -> torch.Tensor:
        # input pixel -> output pixel; an axis-aligned box needs no perspective solve
        first, last = self._corners(params, input)
        height, width = flags["size"]
        scale = torch.tensor([width - 1, height - 1]).to(input) / (last - first)
        matrix = torch.zeros(len(first), 3, 3).to(input)
        matrix[:, 0, 0], matrix[:, 1, 1], matrix[:, 2, 2] = scale[:, 0], scale[:, 1], 1
        matrix[:, :2, 2] = -first * scale
        return matrix

    def apply_transform(self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any],
                        transform: torch.Tensor | None = None) -> torch.Tensor:
        first, last = self._corners(params, input)
        extent = torch.tensor([input.shape[-1] - 1, input.shape[-2] - 1]).to(input)
        # output pixel -> the box in the input's [-1, 1] coordinates (align_corners=True); separable, so the
        # grid is an outer sum instead of affine_grid's full matrix product
        low, high = first / extent * 2 - 1, last / extent * 2 - 1
        height, width = flags["size"]
        steps_x = torch.linspace(0, 1, width).to(input)
        steps_y = torch.linspace(0, 1, height).to(input)
        grid_x = low[:, 0, None] + (high - low)[:, 0, None] * steps_x  # N x width
        grid_y = low[:, 1, None] + (high - low)[:, 1, None] * steps_y  # N x height
        grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
        return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class PerImage(nn.Module, ABC):
    """An op that each image of a batch undergoes with probability p (one draw per image from torch's global
    generator). Only the chosen images are transformed (`transform`), where kornia transforms every image
    and blends."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply_(images.clone())

    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        """In place on `images`, for a pipeline that owns them."""
        chosen = torch.nonzero(torch.rand(len(images)) < self.p).squeeze(1).to(images.device)
        # index_select and index_copy_ move whole rows; images[chosen] goes through the slower advanced indexing
        return images.index_copy_(0, chosen, self.transform(images.index_select(0, chosen)))

    @abstractmethod
    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """The chosen images (a copy, free to change in place) -> their transformed versions."""

    def extra_repr(self) -> str:
        return f"p={self.p}"


class HorizontalFlip(PerImage):
    """Mirror each image left-right with probability p."""

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return images.flip(-1)


class Grayscale(PerImage):
    """Replace each image by its luma in all three channels with probability p."""

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return _gray(images).expand(-1, 3, -1, -1)


class ColorJitter(PerImage):
    """torchvision's ColorJitter, per image: with probability p, brightness, contrast and saturation factors
    drawn from [1 - b, 1 + b], [1 - c, 1 + c], [1 - s, 1 + s] (never below 0) and a hue shift from [-h, h] turns, applied in
    one random order per call (as kornia's ColorJitter does). The chosen images are clamped to [0, 1] first
    and stay there."""

    STEPS = (adjust_brightness_, adjust_contrast_, adjust_saturation_, adjust_hue_)

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float) -> None:
        super().__init__(p)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        n = len(images)
        # a factor below 0 would invert the image: torchvision draws from [max(0, 1 - b), 1 + b] (kornia caps it at 2 too)
        factors = [torch.empty(n).uniform_(max(0.0, 1 - self.brightness), 1 + self.brightness),
                   torch.empty(n).uniform_(max(0.0, 1 - self.contrast), 1 + self.contrast),
                   torch.empty(n).uniform_(max(0.0, 1 - self.saturation), 1 + self.saturation),
                   torch.empty(n).uniform_(-self.hue, self.hue)]
        return self.apply_steps(images.clamp_(0, 1), factors, torch.randperm(4).tolist())

    @classmethod
    def apply_steps(cls, images: torch.Tensor, factors: Sequence[torch.Tensor], order: Sequence[int]) -> torch.Tensor:
        """The steps (0 brightness, 1 contrast, 2 saturation, 3 hue) in `order`, with one factor per image
        each, in place on `images` (values in [0, 1])."""
        # a few images at a time, so that the steps' temporaries stay in the CPU's cache
        for start in range(0, len(images), _COLOUR_CHUNK):
            part = images[start : start + _COLOUR_CHUNK]
            for index in order:
                cls.STEPS[index](part, factors[index][start : start + _COLOUR_CHUNK])
        return images

    def extra_repr(self) -> str:
        return (f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
                f"hue={self.hue}, p={self.p}")


CROP_SCALE = (0.2, 1.0)
"""The crop's share of the image area (MoCo v2's and StolenEncoder's; SimCLR's own is 0.08-1)."""
SMALL_CROP_SCALE = (0.05, 0.2)
"""The small crops of multi-crop (pretrain.small_views): the parts of an image below the full crops' range, as in
SwAV (Caron et al. 2020), whose small crops start where its full ones end."""

COLOR_STRENGTH = 0.5
"""SimCLR's colour distortion strength s (Chen et al. 2020, Appendix A): brightness, contrast and saturation
jitter 0.8 s, hue 0.2 s. At 0.5 (SimCLR's CIFAR-10 setting) it is MoCo v2's and StolenEncoder's 0.4, 0.4, 0.4,
0.1; SimCLR trains on ImageNet at 1. Hue moves at most half the circle, so s is at most 2.5."""
MAX_COLOR_STRENGTH = 2.5


@dataclass(frozen=True)
class ViewSettings:
    """What the ops of a pipeline are built for: the side of its output images, the crop's range of area
    shares, and the colour distortion strength."""

    size: int
    crop_scale: tuple[float, float] = CROP_SCALE
    color_strength: float = COLOR_STRENGTH


AUGMENTATIONS: dict[str, Callable[[ViewSettings], nn.Module]] = {
    "random_resized_crop": lambda view: RandomResizedCrop((view.size, view.size), scale=view.crop_scale),
    "horizontal_flip": lambda view: HorizontalFlip(p=0.5),
    "color_jitter": lambda view: ColorJitter(*[0.8 * view.color_strength] * 3, 0.2 * view.color_strength, p=0.8),
    "grayscale": lambda view: Grayscale(p=0.2),
}
"""name -> factory(ViewSettings), in canonical order."""

BY_NUMBER: dict[str, str] = dict(zip("1234", AUGMENTATIONS))
"""Table VIII's digits -> names."""


def _known() -> str:
    return ", ".join(f"{digit}={name}" for digit, name in BY_NUMBER.items())


def parse_augment(spec: str | Sequence[str]) -> list[str]:
    """Names, in canonical order, from Table VIII's digits ("1234", "23"; "none" or "" for none), from a
    comma-separated string of names, or from a list of names. Unknown names or digits raise ValueError."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "none"):
            return []
        if text.isdigit():
            if not set(text) <= set(BY_NUMBER):
                raise ValueError(f"augmentation digits '{spec}' must be made of 1-4 ({_known()})")
            return [BY_NUMBER[digit] for digit in sorted(set(text))]
        spec = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in spec if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(AUGMENTATIONS)}; or Table VIII digits {_known()})")
    return [name for name in AUGMENTATIONS if name in spec]


class Augmentation(nn.Sequential):
    """The operations in canonical order; checks its input is an N x C x H x W float batch and leaves it
    unchanged. The per-image ops work in place on one copy (a new 512-image batch per op costs page faults)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not images.is_floating_point():
            raise TypeError(f"augmentations expect float images in [0, 1], got {images.dtype}; "
                            "convert uint8 batches with images.float() / 255")
        if images.dim() != 4:
            raise ValueError(f"augmentations expect an N x C x H x W batch, got shape {tuple(images.shape)}")
        owned = False
        for op in self:
            if isinstance(op, PerImage):
                images = op.apply_(images if owned else images.clone())
            else:
                images = op(images)  # a new tensor
            owned = True
        return images


def build_augmentation(names: Sequence[str], image_size: int, crop_scale: tuple[float, float] = CROP_SCALE,
                       color_strength: float = COLOR_STRENGTH) -> nn.Module:
    """The pipeline for `names` (or a digits/comma string, see parse_augment) producing image_size x image_size
    images; no names gives nn.Identity. Output: same shape (with crop: N x C x image_size x image_size), dtype
    and device as the input, values in [0, 1]. `crop_scale` is the crop's range of area shares,
    `color_strength` the colour jitter's strength s (COLOR_STRENGTH)."""
    if not 0 <= color_strength <= MAX_COLOR_STRENGTH:
        raise ValueError(f"colour strength {color_strength} is outside [0, {MAX_COLOR_STRENGTH}]")
    view = ViewSettings(image_size, crop_scale, color_strength)
    ops = [AUGMENTATIONS[name](view) for name in parse_augment(names)]
    return Augmentation(*ops) if ops else nn.Identity()


__all__ = ["AUGMENTATIONS", "BY_NUMBER", "COLOR_STRENGTH", "CROP_SCALE", "MAX_COLOR_STRENGTH", "SMALL_CROP_SCALE", "Augmentation",
           "ColorJitter", "Grayscale", "HorizontalFlip", "PerImage", "RandomResizedCrop", "ViewSettings", "adjust_brightness_", "adjust_contrast_", "adjust_hue_", "adjust_saturation_",
           "build_augmentation", "parse_augment"]
