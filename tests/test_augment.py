"""Augmentations: every op and all 16 combinations of Table VIII keep shape, dtype and range; each image
draws its own parameters; seeds make them reproducible."""

from itertools import combinations

import kornia.augmentation as K
import pytest
import torch
from torch import nn

from encsteal.augment import (
    AUGMENTATIONS,
    BY_NUMBER,
    ColorJitter,
    Grayscale,
    HorizontalFlip,
    RandomResizedCrop,
    ViewSettings,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue_,
    adjust_saturation_,
    build_augmentation,
    parse_augment,
)

ALL = list(AUGMENTATIONS)
COMBINATIONS = [list(c) for r in range(len(ALL) + 1) for c in combinations(ALL, r)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster and immune to a busy machine


def test_registry_and_table_viii_numbers():
    assert ALL == ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"]
    assert BY_NUMBER == {"1": "random_resized_crop", "2": "horizontal_flip", "3": "color_jitter", "4": "grayscale"}
    assert len(COMBINATIONS) == 16


def test_parameters_are_the_simclr_ones():
    crop, flip, jitter, gray = (AUGMENTATIONS[name](ViewSettings(24)) for name in ALL)
    assert isinstance(crop, K.RandomResizedCrop) and tuple(crop.flags["size"]) == (24, 24)
    assert tuple(crop._param_generator.scale) == (0.2, 1.0)
    assert isinstance(flip, HorizontalFlip) and flip.p == 0.5
    assert isinstance(jitter, ColorJitter) and jitter.p == 0.8
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.4, 0.4, 0.4, 0.1)
    assert isinstance(gray, Grayscale) and gray.p == 0.2


def test_color_strength_scales_the_jitter_as_simclr_does():
    (jitter,) = build_augmentation(["color_jitter"], 24, color_strength=1.0)  # SimCLR's ImageNet setting
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert jitter.p == 0.8
    with pytest.raises(ValueError, match="colour strength 3"):
        build_augmentation(["color_jitter"], 24, color_strength=3)  # hue would turn more than half the circle


def test_strong_jitter_never_inverts_an_image():
    torch.manual_seed(0)
    ramp = torch.linspace(0.45, 0.55, 16).view(1, 1, 1, 16).expand(500, 3, 4, 16).contiguous()
    out = ColorJitter(0.0, 2.0, 0.0, 0.0, p=1.0)(ramp)  # contrast factors from [0, 3], not [-1, 3]
    assert (out.diff(dim=-1) >= 0).all()  # every image keeps its pixels' order
    assert (out[..., -1] - out[..., 0]).max() > 0.1 * 2.5  # the top of the range is drawn too


def test_jitter_factors_are_drawn_per_image_within_their_range():
    torch.manual_seed(0)
    x = torch.full((400, 3, 2, 2), 0.5)
    out = ColorJitter(0.4, 0.0, 0.0, 0.0, p=1.0)(x)  # brightness only: 0.5 f, f in [0.6, 1.4]
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 and factors.max() <= 1.4 and factors.std() > 0.2  # uniform: std 0.23
    assert torch.equal(out, out[:, :1, :1, :1].expand_as(out))  # one factor for all pixels of an image
    assert torch.equal(ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0)(x), x)


@pytest.mark.parametrize("op, p", [(HorizontalFlip(0.5), 0.5), (Grayscale(0.2), 0.2), (ColorJitter(0.4, 0.4, 0.4, 0.1, 0.8), 0.8)])
def test_each_image_is_transformed_with_probability_p(op, p):
    torch.manual_seed(0)
    x = torch.rand(2000, 3, 4, 4)
    changed = (op(x) != x).flatten(1).any(dim=1).float().mean().item()
    assert abs(changed - p) < 0.05


@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda names: "+".join(names) or "none")
def test_combination_keeps_shape_dtype_range(names):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    x[0] = 0.0
    x[1] = 1.0  # the edges of the range
    before = x.clone()
    out = build_augmentation(names, 32)(x)
    assert torch.equal(x, before)  # the input is never changed in place
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    if not names:
        assert torch.equal(out, x)


def test_float64_and_channels_last_inputs():
    augment = build_augmentation(ALL, 32)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    assert augment(x).dtype == torch.float64
    x_cl = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert augment(x_cl).shape == (4, 3, 32, 32)


def test_crop_resizes_to_image_size():
    out = build_augmentation(["random_resized_crop"], 16)(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("name", ALL)
def test_each_image_gets_its_own_parameters(name):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    out = build_augmentation([name], 32)(x)
    distinct = torch.unique(out.flatten(1), dim=0)
    assert len(distinct) > 1
    if name != "random_resized_crop":  # p < 1: some images pass through unchanged, others do not
        unchanged = (out == x).flatten(1).all(dim=1)
        assert 0 < unchanged.sum() < len(x)


@pytest.mark.parametrize("names", [[name] for name in ALL] + [ALL], ids=lambda names: "+".join(names))
def test_seeded_augmentation_is_reproducible(names):
    x = torch.rand(8, 3, 32, 32)
    augment = build_augmentation(names, 32)
    torch.manual_seed(3)
    first = augment(x)
    torch.manual_seed(3)
    assert torch.equal(first, augment(x))
    assert not torch.equal(first, augment(x))  # and the next draw differs


def test_order_is_canonical():
    a = build_augmentation(["grayscale", "horizontal_flip", "random_resized_crop"], 32)
    b = build_augmentation(["random_resized_crop", "horizontal_flip", "grayscale"], 32)
    expected = [RandomResizedCrop, HorizontalFlip, Grayscale]
    assert [type(m) for m in a] == [type(m) for m in b] == expected


def test_no_augmentation_is_identity():
    assert isinstance(build_augmentation([], 32), nn.Identity)
    assert isinstance(build_augmentation("none", 32), nn.Identity)


@pytest.mark.parametrize(
    "spec, names",
    [
        ("1234", ALL),
        ("4321", ALL),
        ("23", ["horizontal_flip", "color_jitter"]),
        ("4", ["grayscale"]),
        ("none", []),
        ("None", []),
        ("", []),
        ([], []),
        ("color_jitter, horizontal_flip", ["horizontal_flip", "color_jitter"]),
        (["grayscale", "random_resized_crop"], ["random_resized_crop", "grayscale"]),
        (("grayscale", "grayscale"), ["grayscale"]),
    ],
)
def test_parse_augment(spec, names):
    assert parse_augment(spec) == names


def test_all_sixteen_digit_specs():
    specs = ["none"] + ["".join(c) for r in range(1, 5) for c in combinations("1234", r)]
    assert sorted(map(tuple, map(parse_augment, specs))) == sorted(map(tuple, COMBINATIONS))
    assert build_augmentation("23", 32)[1].__class__ is ColorJitter


def test_unknown_augmentation_or_input():
    with pytest.raises(ValueError, match="known: random_resized_crop"):
        build_augmentation(["solarize"], 32)
    with pytest.raises(ValueError, match="1-4"):
        parse_augment("15")
    augment = build_augmentation(ALL, 32)
    with pytest.raises(TypeError, match="float"):
        augment(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="N x C x H x W"):
        augment(torch.rand(3, 32, 32))


# The crop and the colour jitter draw kornia's parameters and apply them with faster arithmetic: for the same
# parameters they must give kornia's images.

def _edge_cases(n: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(n, 3, 32, 32)
    x[0], x[1] = 0.0, 1.0  # black, white
    x[2] = x[2].mean(dim=0)  # gray: no hue
    x[3] = (x[3] * 255).round() / 255  # uint8 levels: ties between channels
    x[4, 0], x[4, 1] = 0.7, 0.7  # red = green everywhere
    return x


@pytest.mark.parametrize("size", [(32, 32), (16, 24)])
def test_crop_equals_kornias_for_the_same_boxes(size):
    x = _edge_cases()
    stock, ours = K.RandomResizedCrop(size, scale=(0.2, 1.0)), RandomResizedCrop(size, scale=(0.2, 1.0))
    params = stock.forward_parameters(x.shape)
    assert torch.allclose(ours(x, params=params), stock(x, params=params), atol=1e-5)
    assert torch.allclose(ours.transform_matrix, stock.transform_matrix, atol=1e-4)  # what kornia's inverse() uses


def test_whole_image_box_is_the_identity():
    x = _edge_cases(8)
    corners = torch.tensor([[0.0, 0.0], [31.0, 0.0], [31.0, 31.0], [0.0, 31.0]]).expand(8, 4, 2)
    crop = RandomResizedCrop((32, 32), scale=(0.2, 1.0))
    params = crop.forward_parameters(x.shape) | {"src": corners}
    assert torch.allclose(crop(x, params=params), x, atol=1e-5)


def test_colour_jitter_equals_kornias_for_the_same_factors_and_order():
    x = _edge_cases()
    stock = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)
    torch.manual_seed(1)
    for _ in range(8):  # random step orders
        params = stock.forward_parameters(x.shape)
        factors = [params[f"{name}_factor"] for name in ("brightness", "contrast", "saturation", "hue")]
        ours = ColorJitter.apply_steps(x.clamp(0, 1), factors, params["order"].tolist())
        assert torch.allclose(ours, stock(x, params=params), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_colour_step_is_torchvisions_formula(dtype):
    from kornia.enhance import (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_hue,
        adjust_saturation_with_gray_subtraction,
    )

    x = _edge_cases().to(dtype)
    factor = torch.linspace(0.6, 1.4, len(x), dtype=dtype)
    turns = torch.linspace(-0.5, 0.5, len(x), dtype=dtype)
    pairs = [(adjust_brightness_, adjust_brightness_accumulative, factor),
             (adjust_contrast_, adjust_contrast_with_mean_subtraction, factor),
             (adjust_saturation_, adjust_saturation_with_gray_subtraction, factor),
             (adjust_hue_, lambda images, t: adjust_hue(images, t * 2 * torch.pi), turns)]
    for ours, reference, amount in pairs:
        expected = reference(x, amount)
        got = ours(x.clone(), amount)
        assert got.dtype == dtype and torch.allclose(got, expected, atol=1e-5), ours.__name__


def test_hue_closed_forms():
    red = torch.zeros(3, 3, 1, 1)
    red[:, 0] = 1.0
    # a third of a turn takes pure red to pure green, two thirds to pure blue, a whole turn back to red
    out = adjust_hue_(red.clone(), torch.tensor([1 / 3, 2 / 3, 1.0]))
    assert torch.allclose(out[:, :, 0, 0], torch.eye(3)[[1, 2, 0]], atol=1e-6)
    gray = torch.full((2, 3, 4, 4), 0.3)
    assert torch.equal(adjust_hue_(gray.clone(), torch.tensor([0.1, -0.4])), gray)


@pytest.mark.parametrize("ours, stock", [(HorizontalFlip(1.0), K.RandomHorizontalFlip(p=1.0)), (Grayscale(1.0), K.RandomGrayscale(p=1.0))],
                         ids=["flip", "grayscale"])
def test_flip_and_grayscale_equal_kornias(ours, stock):
    x = _edge_cases()
    assert torch.allclose(ours(x), stock(x), atol=1e-6)
