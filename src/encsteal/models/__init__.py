"""Encoder architectures: name -> builder(stem) -> (backbone, feature width).

Every backbone is a torchvision architecture built with ``weights=None`` (nothing is downloaded), its
classifier removed and its last feature map average-pooled to a flat vector, plus ``small_cnn``, a small
fast encoder for CPU demos.

Stems (``STEMS``), per architecture:

==================  =======================  =============================  ================================
architecture        ``imagenet``             ``half``                       ``cifar`` (32x32 inputs)
==================  =======================  =============================  ================================
resnet18/34/50      torchvision unchanged    first conv 3x3 stride 2,       first conv 3x3 stride 1,
                                             no max-pool                    no max-pool
densenet121         torchvision unchanged    conv0 3x3 stride 2, no pool0   conv0 3x3 stride 1, no pool0
mobilenet_v2        torchvision unchanged    torchvision unchanged          first conv stride 1
shufflenet_v2_x1_0  torchvision unchanged    no max-pool                    first conv stride 1, no max-pool
vgg19, vgg19_bn     torchvision unchanged    the same network               the same network
small_cnn           stride 2, first conv     stride 2, first conv           stride 1 throughout
==================  =======================  =============================  ================================

The stem decides the resolution the network's first block sees: a quarter of the input (``imagenet``: 8x8 at
32x32, which leaves ResNet18's last block 1x1), a half (``half``) or all of it (``cifar``). The ``cifar`` stem
is the StolenEncoder paper's choice for 32x32 inputs; for ResNet18 at 32x32 it costs 4x the FLOPs of ``half``
and 15x those of ``imagenet``. Where torchvision's stem already halves (mobilenet_v2), or the network
has no stem to adapt (VGG19: 3x3 convs from the start, five pools take 32x32 to 1x1), a stem may be the same
network as another; the stem is still recorded. The attacker's architecture is chosen independently of the target's; a
final linear layer (``out_dim``) maps the copy's width to the target's when they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv
from torchvision.models import vgg as tv_vgg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STEMS = ("cifar", "half", "imagenet")

Builder = Callable[[str], tuple[nn.Module, int]]


def _stem_conv(out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 first convolution, initialised as torchvision initialises its convolutions."""
    conv = nn.Conv2d(3, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _pooled(features: nn.Module, *tail: nn.Module) -> nn.Sequential:
    return nn.Sequential(features, *tail, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _resnet(factory: Callable[..., tv.ResNet], width: int) -> Builder:
    def build(stem: str) -> tuple[nn.Module, int]:
        model = factory(weights=None)
        if stem in ("cifar", "half"):
            model.conv1, model.maxpool = _stem_conv(64, stride=1 if stem == "cifar" else 2), nn.Identity()
        model.fc = nn.Identity()  # torchvision's forward already pools and flattens
        return model, width

    return build


def _vgg(batch_norm: bool) -> Builder:
    def build(stem: str) -> tuple[nn.Module, int]:
        # Same network for every stem (see the module docstring). Only torchvision's VGG19 feature layers are
        # built: its classifier (120M parameters, dropped for global average pooling) costs a second to make.
        features = tv_vgg.make_layers(tv_vgg.cfgs["E"], batch_norm=batch_norm)
        for module in features.modules():  # torchvision's VGG initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        return _pooled(features), 512

    return build


def _densenet121(stem: str) -> tuple[nn.Module, int]:
    model = tv.densenet121(weights=None)
    if stem in ("cifar", "half"):
        model.features.conv0 = _stem_conv(64, stride=1 if stem == "cifar" else 2)
        model.features.pool0 = nn.Identity()
    return _pooled(model.features, nn.ReLU(inplace=True)), 1024  # torchvision applies ReLU after norm5


def _mobilenet_v2(stem: str) -> tuple[nn.Module, int]:
    model = tv.mobilenet_v2(weights=None)
    if stem == "cifar":
        model.features[0][0].stride = (1, 1)
    return _pooled(model.features), 1280


def _shufflenet_v2_x1_0(stem: str) -> tuple[nn.Module, int]:
    model = tv.shufflenet_v2_x1_0(weights=None)
    if stem in ("cifar", "half"):
        model.maxpool = nn.Identity()
    if stem == "cifar":
        model.conv1[0].stride = (1, 1)
    model.fc = nn.Identity()  # torchvision's forward already averages over space
    return model, 1024


def _small_cnn(stem: str) -> tuple[nn.Module, int]:
    """Four conv3x3-BN-ReLU blocks (32, 64, 128, 256 channels), max-pool 2 after the first three, global
    average pool: a fast encoder for CPU demos. The imagenet and half stems use stride 2 in the first conv."""
    widths = [3, 32, 64, 128, 256]
    layers: list[nn.Module] = []
    for block in range(4):
        stride = 2 if (block == 0 and stem != "cifar") else 1
        layers += [
            nn.Conv2d(widths[block], widths[block + 1], 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[block + 1]),
            nn.ReLU(inplace=True),
        ]
        if block < 3:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 256


ARCHITECTURES: dict[str, Builder] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet(tv.resnet18, 512),
    "resnet34": _resnet(tv.resnet34, 512),
    "resnet50": _resnet(tv.resnet50, 2048),
    "vgg19": _vgg(batch_norm=False),
    "vgg19_bn": _vgg(batch_norm=True),
    "densenet121": _densenet121,
    "mobilenet_v2": _mobilenet_v2,
    "shufflenet_v2_x1_0": _shufflenet_v2_x1_0,
}
"""name -> builder(stem) -> (backbone mapping N x 3 x H x W normalised floats to N x width, width)."""


class Encoder(nn.Module):
    """Image batch (float in [0, 1], N x 3 x H x W) -> feature vectors N x D.

    The encoder holds its input normalisation (``mean``/``std`` buffers, saved with the weights), so the
    target and any copy never disagree on it. ``out_dim`` adds a final ``nn.Linear`` from the backbone's
    width to ``out_dim`` (a stolen architecture whose width differs from the target's); ``None`` keeps the
    backbone's features as they are. ``feature_dim`` is the output width either way."""

    def __init__(self, arch: str, stem: str = "cifar", out_dim: int | None = None) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{arch}' (known: {', '.join(ARCHITECTURES)})")
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}' for {arch} (known: {', '.join(STEMS)})")
        if out_dim is not None and (isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1):
            raise ValueError(f"out_dim must be a positive integer or None, got {out_dim!r}")
        self.arch, self.stem, self.out_dim = arch, stem, out_dim
        self.backbone, width = ARCHITECTURES[arch](stem)
        self.projection = nn.Linear(width, out_dim) if out_dim is not None else nn.Identity()
        self.feature_dim: int = out_dim if out_dim is not None else width
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not images.is_floating_point():
            raise TypeError(f"{self.arch} encoder expects float images in [0, 1], got {images.dtype}; "
                            "convert uint8 batches with images.float() / 255")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.arch} encoder expects N x 3 x H x W images, got shape {tuple(images.shape)}; "
                             "repeat grayscale images to 3 channels")
        return self.projection(self.backbone((images - self.mean) / self.std))

    def spec(self) -> dict:
        """Everything needed to rebuild this encoder (see encsteal.checkpoint)."""
        return {"arch": self.arch, "stem": self.stem, "out_dim": self.out_dim, "feature_dim": self.feature_dim,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    def extra_repr(self) -> str:
        return f"arch={self.arch}, stem={self.stem}, feature_dim={self.feature_dim}"


def build_encoder(arch: str, stem: str = "cifar", out_dim: int | None = None) -> Encoder:
    """A freshly initialised encoder; an unknown arch or stem raises ValueError listing the known ones."""
    return Encoder(arch, stem, out_dim)


__all__ = ["ARCHITECTURES", "IMAGENET_MEAN", "IMAGENET_STD", "STEMS", "Encoder", "build_encoder"]
