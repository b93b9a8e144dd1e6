"""Augmentations: every op and all 16 combinations of Table VIII keep shape, dtype and range; each image
draws its own parameters; seeds make them reproducible."""

from itertools import combinations

import pytest
import torch

from encsteal.augment import AUGMENTATIONS, build_augmentation, parse_augment

ALL = list(AUGMENTATIONS)
COMBINATIONS = [list(c) for r in range(len(ALL) + 1) for c in combinations(ALL, r)]


def test_sixteen_combinations():
    assert len(COMBINATIONS) == 16


@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda names: "+".join(names) or "none")
def test_combination_keeps_shape_dtype_range(names):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    out = build_augmentation(names, 32)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    if not names:
        assert torch.equal(out, x)


@pytest.mark.parametrize("name", ALL)
def test_each_image_gets_its_own_parameters(name):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    out = build_augmentation([name], 32)(x)
    distinct = torch.unique(out.flatten(1), dim=0)
    assert len(distinct) > 1


@pytest.mark.parametrize("name", ALL)
def test_seeded_augmentation_is_reproducible(name):
    x = torch.rand(8, 3, 32, 32)
    augment = build_augmentation([name], 32)
    torch.manual_seed(3)
    first = augment(x)
    torch.manual_seed(3)
    assert torch.equal(first, augment(x))


def test_order_is_canonical():
    a = build_augmentation(["grayscale", "horizontal_flip"], 32)
    b = build_augmentation(["horizontal_flip", "grayscale"], 32)
    assert [type(m) for m in a] == [type(m) for m in b]


@pytest.mark.parametrize(
    "spec, names",
    [
        ("1234", ALL),
        ("23", ["horizontal_flip", "color_jitter"]),
        ("4", ["grayscale"]),
        ("none", []),
        ("", []),
        (["grayscale", "random_resized_crop"], ["random_resized_crop", "grayscale"]),
    ],
)
def test_parse_augment(spec, names):
    assert parse_augment(spec) == names


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="known: random_resized_crop"):
        build_augmentation(["solarize"], 32)
    with pytest.raises(ValueError, match="1-4"):
        parse_augment("15")
