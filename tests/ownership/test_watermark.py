"""The rotation watermark: rotations, embedding while pre-training, the artefact, alignment and the reference test."""

from pathlib import Path

import pytest
import torch
from scipy import stats

from encsteal.config import PretrainConfig, config_from_dict
from encsteal.data import load_dataset
from encsteal.experiments.pipeline import Run, pretrain
from encsteal.ownership.watermark import (
    ROTATIONS,
    all_rotations,
    create_watermark,
    embedded_accuracy,
    fit_alignment,
    load_watermark,
    reference_test,
    rotate,
    watermark_path,
)
from encsteal.pretrain import PRETRAINERS
from encsteal.training import TrainContext
from conftest import tiny_tree

CPU = torch.device("cpu")


def test_rotations_are_exact_quarter_turns():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    turned, classes = all_rotations(image)
    assert classes.tolist() == [0, 1, 2, 3] and turned.dtype == torch.uint8
    assert torch.equal(turned[0], image[0])
    assert turned[1, 0, 0].tolist() == [3, 7, 11, 15]  # counter-clockwise: the last column becomes the first row
    assert torch.equal(turned[2], image[0].flip(1).flip(2))
    assert torch.equal(rotate(turned[3:4], torch.tensor([1])), image)  # four quarter turns are a full one


def test_the_recipe_leaves_an_unset_watermark_out():
    assert not any(key.startswith("watermark") for key in PretrainConfig().recipe())
    recipe = PretrainConfig(watermark="rotation", watermark_seed=5).recipe()
    assert recipe["watermark"] == "rotation" and recipe["watermark_seed"] == 5
    with pytest.raises(ValueError, match="watermark_seed"):
        PretrainConfig(watermark="rotation")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(PRETRAINERS))
def test_pretraining_embeds_the_watermark(method, one_thread):
    images = load_dataset("fashion-mnist", "train", root=Path("unused"), image_size=32).images[:256]
    config = PretrainConfig(method=method, arch="small_cnn", stem="imagenet", epochs=30, batch_size=64, moco_queue=64)
    watermark = create_watermark(images, 32, 3, 256, 1.0, config.batch_size)
    untrained = PRETRAINERS[method](images, config.model_copy(update={"epochs": 0}), TrainContext(device=CPU, progress=False))
    encoder = PRETRAINERS[method](images, config, TrainContext(device=CPU, progress=False), auxiliary=watermark)
    assert embedded_accuracy(watermark, untrained) < 0.5 and embedded_accuracy(watermark, encoder) > 0.8


def test_a_watermark_does_not_change_the_pretraining_stream(one_thread):
    """Its batches come from its own generator: the self-supervised part draws the same random numbers (its
    augmentations, its batches) with or without it, so a watermarked target and a plain one are a paired comparison."""
    digits = load_dataset("digits", "train", root=Path("unused"), image_size=32).images[:64]
    config = PretrainConfig(arch="small_cnn", epochs=1, batch_size=32)
    states = []
    for auxiliary in (None, create_watermark(digits, 16, 1, 256, 1.0, 32)):
        PRETRAINERS["simclr"](digits, config, TrainContext(device=CPU, progress=False), auxiliary=auxiliary)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


def test_the_pipeline_saves_the_watermark_beside_the_target(tmp_path, one_thread):
    tree = tiny_tree(run_dir=str(tmp_path / "run"))
    tree["pretrain"] = {**tree["pretrain"], "watermark": "rotation", "watermark_seed": 11, "watermark_images": 16}
    path = pretrain(Run.open(config_from_dict(tree), progress=False))
    watermark = load_watermark(watermark_path(path))
    assert watermark.images.shape == (16, 3, 32, 32) and watermark.meta["seed"] == 11
    assert watermark.meta["feature_dim"] == 256 and 0 <= watermark.meta["accuracy"] <= 1
    assert watermark.head(torch.zeros(2, 256)).shape == (2, ROTATIONS)


def test_lstsq_alignment_undoes_an_affine_map():
    generator = torch.Generator().manual_seed(0)
    victim = torch.randn(500, 16, generator=generator, dtype=torch.float64)
    transform = torch.randn(16, 24, generator=generator, dtype=torch.float64)  # to a wider, padded space
    suspect = victim @ transform + 3.0
    suspect[:, 5] = 7.0  # a constant (padded) dimension
    align = fit_alignment(suspect[:400], victim[:400], "lstsq", ridge=1e-9)
    assert torch.allclose(align(suspect[400:]), victim[400:], atol=1e-4)


def test_procrustes_alignment_undoes_a_permutation_a_rotation_and_a_scale():
    generator = torch.Generator().manual_seed(1)
    victim = torch.randn(400, 12, generator=generator, dtype=torch.float64) * torch.linspace(0.5, 2, 12)
    suspect = 4 * victim[:, torch.randperm(12, generator=generator)]
    rotation = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))[0]
    for obfuscated in (suspect, 0.5 * victim @ rotation - 2.0):
        align = fit_alignment(obfuscated[:300], victim[:300], "procrustes", ridge=0)
        assert torch.allclose(align(obfuscated[300:]), victim[300:], atol=1e-6)


def test_reference_test_is_a_prediction_t_test():
    references = [0.24, 0.27, 0.26, 0.30]
    t, p = reference_test(0.9, references, 400)
    mean, spread = sum(references) / 4, torch.tensor(references, dtype=torch.float64).std().item()
    variance = spread**2 + mean * (1 - mean) / 400
    assert t == pytest.approx((0.9 - mean) / (variance * 1.25) ** 0.5)
    assert p == pytest.approx(stats.t.sf(t, 3)) and p < 1e-3
    assert reference_test(0.27, references, 400)[1] > 0.3  # one more independent encoder: no claim
    with pytest.raises(Exception, match="two reference"):
        reference_test(0.9, [0.25], 400)
