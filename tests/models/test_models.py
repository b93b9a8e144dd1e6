"""Every registered architecture, with both stems, gives features of its width and trains."""

import pytest
import torch

from encsteal.models import ARCHITECTURES, STEMS, Encoder, build_encoder
from encsteal.models.heads import ProjectionHead


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_forward_backward(arch, stem):
    torch.manual_seed(0)
    encoder = build_encoder(arch, stem).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = encoder(x)
    assert out.shape == (2, encoder.feature_dim)
    out.pow(2).mean().backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    encoder.eval()
    with torch.inference_mode():
        assert encoder(x).shape == (2, encoder.feature_dim)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "mobilenet_v2"])
def test_stems_differ(arch):
    cifar, imagenet = build_encoder(arch, "cifar"), build_encoder(arch, "imagenet")
    assert str(cifar.backbone) != str(imagenet.backbone)


def test_out_dim_maps_to_the_targets_width():
    encoder = build_encoder("small_cnn", out_dim=512)
    assert encoder.feature_dim == 512
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert encoder.spec()["out_dim"] == 512


def test_unknown_architecture_or_stem():
    with pytest.raises(ValueError, match="known: .*resnet34"):
        Encoder("resnet35")
    with pytest.raises(ValueError, match="stem"):
        Encoder("resnet18", "huge")


def test_projection_head():
    head = ProjectionHead(256, 256, 128)
    assert head(torch.randn(4, 256)).shape == (4, 128)
