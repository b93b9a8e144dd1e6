"""Every registered architecture, with both stems, gives features of its width, trains, and runs channels_last."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from encsteal.models import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, STEMS, Encoder, build_encoder
from encsteal.models.heads import ProjectionHead

WIDTHS = {
    "small_cnn": 256, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "vgg19": 512, "vgg19_bn": 512,
    "densenet121": 1024, "mobilenet_v2": 1280, "shufflenet_v2_x1_0": 1024,
}
CL = torch.channels_last


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster and immune to a busy machine


def test_registry_is_the_documented_one():
    assert set(ARCHITECTURES) == set(WIDTHS)  # widths are checked per architecture below
    assert STEMS == ("cifar", "half", "imagenet")


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture(arch, stem):
    torch.manual_seed(0)
    encoder = build_encoder(arch, stem)
    assert (encoder.arch, encoder.stem, encoder.feature_dim) == (arch, stem, WIDTHS[arch])
    x = torch.rand(2, 3, 32, 32)

    encoder.eval()
    with torch.inference_mode():
        reference = encoder(x)
    assert reference.shape == (2, WIDTHS[arch]) and torch.isfinite(reference).all()

    encoder.to(memory_format=CL)
    x_cl = x.contiguous(memory_format=CL)
    with torch.inference_mode():
        out_cl = encoder(x_cl)
    scale = reference.abs().max().item()
    torch.testing.assert_close(out_cl, reference, rtol=1e-3, atol=1e-4 * max(scale, 1.0))

    encoder.train()
    out = encoder(x_cl)
    assert out.shape == (2, WIDTHS[arch])
    out.pow(2).mean().backward()
    params = list(encoder.parameters())
    assert all(p.grad is not None for p in params), "some parameters take no part in the forward pass"
    assert all(torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_stems_keep_more_resolution_in_order(arch):
    """Every (arch, stem) pair means something: on 32x32 inputs the cifar stem costs more compute than half,
    and half more than imagenet, except where the module docstring says two stems are the same network."""

    def flops(stem: str) -> int:
        encoder = build_encoder(arch, stem).eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            encoder(torch.rand(1, 3, 32, 32))
        return counter.get_total_flops()

    cifar, half, imagenet = flops("cifar"), flops("half"), flops("imagenet")
    if arch.startswith("vgg"):
        assert cifar == half == imagenet
        assert build_encoder(arch, "cifar").spec()["stem"] == "cifar"  # still recorded
    elif arch in ("mobilenet_v2", "small_cnn"):  # their imagenet stem already only halves
        assert cifar > 1.5 * half and half == imagenet
    else:
        assert cifar > 1.5 * half > 1.5 * 1.5 * imagenet


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_out_dim_adds_a_projection(arch):
    torch.manual_seed(0)
    encoder = build_encoder(arch, "imagenet", out_dim=48).eval()
    assert isinstance(encoder.projection, nn.Linear)
    assert (encoder.projection.in_features, encoder.projection.out_features) == (WIDTHS[arch], 48)
    assert encoder.feature_dim == 48 and encoder.spec()["out_dim"] == 48
    with torch.inference_mode():
        assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 48)
    assert isinstance(build_encoder(arch, "imagenet").projection, nn.Identity)


def test_spec_rebuilds_the_encoder():
    encoder = build_encoder("small_cnn", "imagenet", out_dim=64)
    spec = encoder.spec()
    assert spec == {"arch": "small_cnn", "stem": "imagenet", "out_dim": 64, "feature_dim": 64,
                    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    rebuilt = Encoder(spec["arch"], spec["stem"], spec["out_dim"])
    assert rebuilt.state_dict().keys() == encoder.state_dict().keys()
    assert {"mean", "std"} <= set(encoder.state_dict())  # the normalisation travels with the weights


def test_normalisation_is_imagenets():
    encoder = build_encoder("small_cnn").eval()
    seen = {}
    encoder.backbone.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    with torch.inference_mode():
        encoder(torch.ones(1, 3, 16, 16))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(seen["x"][0, :, 0, 0], expected)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="known: .*resnet34"):
        Encoder("resnet35")
    with pytest.raises(ValueError, match="stem"):
        build_encoder("resnet18", "huge")
    with pytest.raises(ValueError, match="out_dim"):
        build_encoder("small_cnn", out_dim=0)
    encoder = build_encoder("small_cnn")
    with pytest.raises(TypeError, match="float"):
        encoder(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        encoder(torch.rand(1, 1, 32, 32))


def test_projection_head():
    head = ProjectionHead(256, 64, 32)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    out = head(torch.randn(4, 256))
    assert out.shape == (4, 32)
    out.sum().backward()
    assert head.eval()(torch.randn(1, 256)).shape == (1, 32)
