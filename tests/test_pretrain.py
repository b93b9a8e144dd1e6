"""Every pre-training method runs, learns, and resumes from its per-epoch state."""

import json
from pathlib import Path

import pytest
import torch

from encsteal.config import PretrainConfig
from encsteal.data import load_dataset
from encsteal.models import Encoder
from encsteal.pretrain import PRETRAINERS
from encsteal.pretrain.moco import moco_loss
from encsteal.training import MetricsLog, TrainContext, make_optimizer, scheduled_lr


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("optimizer, lr", [("adam", 1e-3), ("lars", 0.5)])
@pytest.mark.parametrize("method", sorted(PRETRAINERS))
def test_pretrainer_runs_and_loss_drops(method, optimizer, lr, tmp_path):
    digits = load_dataset("digits", "train", root=Path("unused"), image_size=32).images[:64]
    config = PretrainConfig(method=method, arch="small_cnn", epochs=12, batch_size=16, moco_queue=16, moco_momentum=0.9,
                            temperature=0.2, optimizer=optimizer, lr=lr, weight_decay=1e-6,
                            augment=["random_resized_crop", "color_jitter"])
    log = MetricsLog(tmp_path / "metrics.jsonl")
    encoder = PRETRAINERS[method](digits, config, TrainContext(device=torch.device("cpu"), seed=0, log=log, progress=False))
    assert isinstance(encoder, Encoder) and not encoder.training
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    # from epoch 2 on (MoCo's queue then holds real keys, not its random initial ones) the loss falls
    assert min(losses[-3:]) < losses[1] - 0.1


class Killed(Exception):
    pass


def kill_after_first_epoch(record):
    """A metrics sink that stops the process right after epoch 1 was saved, as a kill would."""
    if record["epoch"] == 1:
        raise Killed


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("method", sorted(PRETRAINERS))
def test_pretraining_resumes_to_the_same_encoder(method, schedule, images, tmp_path):
    config = PretrainConfig(method=method, arch="small_cnn", epochs=2, batch_size=16, moco_queue=64, lr_schedule=schedule)
    assert_resumes_to_the_same_encoder(config, images, tmp_path)


def assert_resumes_to_the_same_encoder(config, images, tmp_path):
    """Killed after its first epoch and started again, pre-training ends with the encoder of an unbroken run."""
    cpu = torch.device("cpu")
    straight = PRETRAINERS[config.method](images, config, TrainContext(device=cpu, seed=0, progress=False))
    state = tmp_path / "state.pt"
    with pytest.raises(Killed):
        PRETRAINERS[config.method](images, config, TrainContext(device=cpu, seed=0, state_path=state, log=kill_after_first_epoch, progress=False))
    assert state.exists()
    resumed = PRETRAINERS[config.method](images, config, TrainContext(device=cpu, seed=0, state_path=state, progress=False))
    assert not state.exists()  # a finished loop cleans up its state
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(straight(x), resumed(x), atol=1e-5)


def test_lr_schedules_closed_form():
    assert scheduled_lr(1e-3, "constant", 7, 10) == 1e-3
    assert scheduled_lr(1e-3, "cosine", 0, 10) == 1e-3
    assert scheduled_lr(1e-3, "cosine", 5, 10) == pytest.approx(5e-4)
    assert scheduled_lr(1e-3, "cosine", 10, 10) == pytest.approx(0, abs=1e-15)
    curve = [scheduled_lr(1.0, "cosine", step, 10) for step in range(11)]
    assert all(a > b for a, b in zip(curve, curve[1:]))
    assert [a + b for a, b in zip(curve, reversed(curve))] == pytest.approx([1.0] * 11)  # symmetric about the middle
    with pytest.raises(ValueError, match="schedule"):
        scheduled_lr(1e-3, "step", 0, 10)


def test_warmup_ramps_up_then_hands_over_to_the_schedule():
    # 4 warm-up steps of 12: base·1/4 ... base, then a cosine over the remaining 8 steps
    assert [scheduled_lr(1.0, "cosine", step, 12, 4) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert scheduled_lr(1.0, "cosine", 4, 12, 4) == 1.0
    assert scheduled_lr(1.0, "cosine", 8, 12, 4) == pytest.approx(0.5)
    assert scheduled_lr(1.0, "cosine", 12, 12, 4) == pytest.approx(0, abs=1e-15)
    assert scheduled_lr(1.0, "constant", 1, 12, 4) == 0.5 and scheduled_lr(1.0, "constant", 9, 12, 4) == 1.0


def test_lars_step_closed_form():
    # one step from rest: a weight moves by lr · trust · ‖w‖ / (‖g‖ + wd·‖w‖) · (g + wd·w), with trust = 0.001;
    # a bias (or batch-norm parameter) by lr · g, with neither the ratio nor weight decay
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad, bias.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.5])  # ‖g‖ = 2
    lr, wd = 10.0, 0.1
    make_optimizer("lars", [weight, bias], lr, weight_decay=wd, momentum=0.9).step()
    ratio = 0.001 * 5 / (2 + wd * 5)
    expected = torch.tensor([[3.0, 4.0]]) - lr * ratio * (torch.tensor([[0.0, 2.0]]) + wd * torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(weight.detach(), expected)
    assert bias.item() == pytest.approx(1.0 - lr * 0.5)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_sgd_and_lars_resume_to_the_same_encoder(optimizer, images, tmp_path):
    config = PretrainConfig(arch="small_cnn", epochs=2, batch_size=16, optimizer=optimizer, lr=0.1, weight_decay=1e-6,
                            warmup_epochs=1, lr_schedule="cosine")
    assert_resumes_to_the_same_encoder(config, images, tmp_path)  # the momentum buffers are saved with the state


def test_moco_loss_closed_form():
    # a query equal to its key and orthogonal to K = 3 queue entries: logits [1/τ, 0, 0, 0]
    q = torch.eye(4)[:1]
    queue = torch.eye(4)[1:]
    tau = 0.2
    expected = -torch.log(torch.exp(torch.tensor(1 / tau)) / (torch.exp(torch.tensor(1 / tau)) + 3))
    assert moco_loss(q, q, queue, tau).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture
def trained_batches(monkeypatch):
    """(rows, side) of every batch the encoder is given while the test runs."""
    batches = []
    real_forward = Encoder.forward

    def recording_forward(self, batch):
        batches.append((len(batch), batch.shape[-1]))
        return real_forward(self, batch)

    monkeypatch.setattr(Encoder, "forward", recording_forward)
    return batches


@pytest.mark.parametrize("method", sorted(PRETRAINERS))
def test_smaller_views_train_an_encoder_used_at_full_size(method, images, trained_batches):
    config = PretrainConfig(method=method, arch="small_cnn", epochs=1, batch_size=16, moco_queue=16, view_size=16)
    encoder = PRETRAINERS[method](images, config, TrainContext(device=torch.device("cpu"), seed=0, progress=False))
    sizes = [side for _, side in trained_batches]
    assert sizes and set(sizes) == {16}  # every training view is 16 x 16
    with torch.inference_mode():
        assert encoder(images[:4].float() / 255).shape == (4, encoder.feature_dim)


@pytest.fixture
def trained_images(monkeypatch):
    """Every batch of images the encoders are given while the test runs."""
    batches = []
    real_forward = Encoder.forward

    def recording_forward(self, batch):
        batches.append(batch.detach().float().clone())
        return real_forward(self, batch)

    monkeypatch.setattr(Encoder, "forward", recording_forward)
    return batches


@pytest.mark.parametrize("method", sorted(PRETRAINERS))
def test_views_are_jittered_at_the_configured_strength(method, images, trained_images):
    n = len(images)

    def first_step_views(strength):
        trained_images.clear()
        config = PretrainConfig(method=method, arch="small_cnn", epochs=1, batch_size=n, moco_queue=n,
                                augment=["color_jitter"], color_strength=strength)
        PRETRAINERS[method](images, config, TrainContext(device=torch.device("cpu"), seed=0, progress=False))
        return torch.cat(trained_images)[: 2 * n].chunk(2)  # SimCLR: both views in one batch; MoCo: queries, keys

    first, second = first_step_views(0.0)
    assert torch.allclose(first, second, atol=1e-5)  # strength 0: no jitter, so both views are the image
    first, second = first_step_views(1.0)
    assert (first - second).abs().flatten(1).amax(dim=1).gt(0.01).float().mean() > 0.5


def test_later_settings_are_recorded_only_when_set():
    # checkpoints made before the settings existed still match their presets
    later = {"view_size", "small_views", "small_view_size", "optimizer", "momentum", "warmup_epochs", "color_strength"}
    assert not later & set(PretrainConfig().recipe())
    assert PretrainConfig(optimizer="lars", warmup_epochs=10).recipe().items() >= {
        "optimizer": "lars", "momentum": 0.9, "warmup_epochs": 10}.items()
    assert PretrainConfig(view_size=24).recipe()["view_size"] == 24
    assert PretrainConfig(color_strength=1.0).recipe()["color_strength"] == 1.0
    assert PretrainConfig(small_views=2).recipe().items() >= {"small_views": 2, "small_view_size": 16}.items()


def test_multi_crop_trains_on_full_and_small_views(images, trained_batches, tmp_path):
    config = PretrainConfig(arch="small_cnn", epochs=1, batch_size=16, view_size=24, small_views=3, small_view_size=12)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    PRETRAINERS["simclr"](images, config, TrainContext(device=torch.device("cpu"), seed=0, log=log, progress=False))
    # each step: both full views of the 16 images in one batch, then their three small crops in another
    assert set(trained_batches) == {(32, 24), (48, 12)} and len(trained_batches) == 2 * 2
    assert torch.isfinite(torch.tensor(json.loads((tmp_path / "metrics.jsonl").read_text())["loss"]))


def test_multi_crop_resumes_to_the_same_encoder(images, tmp_path):
    config = PretrainConfig(arch="small_cnn", epochs=2, batch_size=16, small_views=2, small_view_size=12)
    assert_resumes_to_the_same_encoder(config, images, tmp_path)
