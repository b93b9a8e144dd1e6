"""Encoder architectures: name -> builder(stem) -> (backbone, feature width).

`stem="imagenet"` is torchvision's architecture unchanged; `stem="cifar"` is the small-image stem the
StolenEncoder paper uses for 32x32 inputs (a 3x3 stride-1 first convolution and no early max-pool), about
ten times the compute on a CPU. The attacker's architecture is chosen independently of the target's; a
final linear layer (`out_dim`) maps the copy's width to the target's when they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STEMS = ("cifar", "imagenet")


def _resnet(factory: Callable[[], tv.ResNet], width: int) -> Callable[[str], tuple[nn.Module, int]]:
    def build(stem: str) -> tuple[nn.Module, int]:
        model = factory()
        if stem == "cifar":
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        model.fc = nn.Identity()
        return model, width

    return build


def _vgg(factory: Callable[[], tv.VGG]) -> Callable[[str], tuple[nn.Module, int]]:
    def build(stem: str) -> tuple[nn.Module, int]:
        # VGG has no stem to adapt: its 3x3 convolutions already suit 32x32 inputs (five pools -> 1x1).
        model = factory()
        return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 512

    return build


def _densenet121(stem: str) -> tuple[nn.Module, int]:
    model = tv.densenet121()
    if stem == "cifar":
        model.features.conv0 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.features.pool0 = nn.Identity()
    return nn.Sequential(model.features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 1024


def _mobilenet_v2(stem: str) -> tuple[nn.Module, int]:
    model = tv.mobilenet_v2()
    if stem == "cifar":
        model.features[0][0].stride = (1, 1)
    return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 1280


def _shufflenet_v2_x1_0(stem: str) -> tuple[nn.Module, int]:
    model = tv.shufflenet_v2_x1_0()
    if stem == "cifar":
        model.conv1[0].stride = (1, 1)
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model, 1024


def _small_cnn(stem: str) -> tuple[nn.Module, int]:
    """Four conv3x3-BN-ReLU blocks (32, 64, 128, 256 channels), max-pool after the first three, global
    average pool: a fast encoder for CPU demos. The imagenet stem halves the resolution in the first block."""
    widths = [3, 32, 64, 128, 256]
    layers: list[nn.Module] = []
    for block in range(4):
        stride = 2 if (block == 0 and stem == "imagenet") else 1
        layers += [
            nn.Conv2d(widths[block], widths[block + 1], 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[block + 1]),
            nn.ReLU(inplace=True),
        ]
        if block < 3:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), 256


ARCHITECTURES: dict[str, Callable[[str], tuple[nn.Module, int]]] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet(tv.resnet18, 512),
    "resnet34": _resnet(tv.resnet34, 512),
    "resnet50": _resnet(tv.resnet50, 2048),
    "vgg19": _vgg(tv.vgg19),
    "vgg19_bn": _vgg(tv.vgg19_bn),
    "densenet121": _densenet121,
    "mobilenet_v2": _mobilenet_v2,
    "shufflenet_v2_x1_0": _shufflenet_v2_x1_0,
}


class Encoder(nn.Module):
    """Image batch (float in [0, 1], N x 3 x H x W) -> feature vectors N x D.

    The encoder holds its input normalisation, so the target and any copy never disagree on it."""

    def __init__(self, arch: str, stem: str = "cifar", out_dim: int | None = None) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{arch}' (known: {', '.join(ARCHITECTURES)})")
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}' (known: {', '.join(STEMS)})")
        self.arch, self.stem, self.out_dim = arch, stem, out_dim
        self.backbone, width = ARCHITECTURES[arch](stem)
        self.projection = nn.Linear(width, out_dim) if out_dim is not None else nn.Identity()
        self.feature_dim = out_dim if out_dim is not None else width
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone((images - self.mean) / self.std))

    def spec(self) -> dict:
        """Everything needed to rebuild this encoder (see encsteal.checkpoint)."""
        return {"arch": self.arch, "stem": self.stem, "out_dim": self.out_dim, "feature_dim": self.feature_dim,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def build_encoder(arch: str, stem: str = "cifar", out_dim: int | None = None) -> Encoder:
    return Encoder(arch, stem, out_dim)


__all__ = ["ARCHITECTURES", "STEMS", "Encoder", "build_encoder"]
