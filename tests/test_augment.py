"""Augmentations: every op and all 16 combinations of Table VIII keep shape, dtype and range; each image
draws its own parameters; seeds make them reproducible."""

from itertools import combinations

import kornia.augmentation as K
import pytest
import torch
from torch import nn

from encsteal.augment import AUGMENTATIONS, BY_NUMBER, build_augmentation, parse_augment

ALL = list(AUGMENTATIONS)
COMBINATIONS = [list(c) for r in range(len(ALL) + 1) for c in combinations(ALL, r)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster and immune to a busy machine


def test_registry_and_table_viii_numbers():
    assert ALL == ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"]
    assert BY_NUMBER == {"1": "random_resized_crop", "2": "horizontal_flip", "3": "color_jitter", "4": "grayscale"}
    assert len(COMBINATIONS) == 16


def test_parameters_are_the_simclr_ones():
    crop, flip, jitter, gray = (AUGMENTATIONS[name](24) for name in ALL)
    assert isinstance(crop, K.RandomResizedCrop) and tuple(crop.flags["size"]) == (24, 24)
    assert tuple(crop._param_generator.scale) == (0.2, 1.0)
    assert isinstance(flip, K.RandomHorizontalFlip) and flip.p == 0.5
    assert type(jitter) is K.ColorJitter and jitter.p == 0.8  # ColorJitter, not ColorJiggle
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.4, 0.4, 0.4, 0.1)
    assert isinstance(gray, K.RandomGrayscale) and gray.p == 0.2


@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda names: "+".join(names) or "none")
def test_combination_keeps_shape_dtype_range(names):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    x[0] = 0.0
    x[1] = 1.0  # the edges of the range
    out = build_augmentation(names, 32)(x)
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
    expected = [K.RandomResizedCrop, K.RandomHorizontalFlip, K.RandomGrayscale]
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
    assert build_augmentation("23", 32)[1].__class__ is K.ColorJitter


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
