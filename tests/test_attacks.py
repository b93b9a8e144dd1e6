"""Every registered attack (and the variants the paper compares) trains on tiny data and pays what it should."""

import json

import pytest
import torch

from encsteal.attacks import ATTACKS
from encsteal.config import AttackConfig, ConfigError
from encsteal.losses import DISTANCES
from encsteal.models import Encoder, build_encoder
from encsteal.target import LocalTarget
from encsteal.training import MetricsLog, TrainContext, scheduled_lr


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    return LocalTarget(build_encoder("small_cnn"), image_size=32, device=torch.device("cpu"), batch_size=16)


@pytest.fixture(scope="module")
def surrogate():
    return torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def ctx():
    return TrainContext(device=torch.device("cpu"), seed=0, progress=False)


EXPECTED_QUERIES = {
    "stolenencoder": lambda n, epochs, views: n,
    "stolenencoder-query-aug": lambda n, epochs, views: n + epochs * n * views,  # (e + 1)·|D| for k = 1
    "surrogate-pretrain": lambda n, epochs, views: 0,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_trains_and_pays_what_it_should(name, target, surrogate):
    assert set(EXPECTED_QUERIES) == set(ATTACKS), "add the new attack's query cost here"
    config = AttackConfig(name=name, arch="small_cnn", epochs=2, batch_size=12, augment=["horizontal_flip", "grayscale"])
    before = target.queries
    stolen = ATTACKS[name](target, surrogate, config, ctx())
    assert isinstance(stolen, Encoder) and not stolen.training
    assert target.queries - before == EXPECTED_QUERIES[name](len(surrogate), 2, 1)
    with torch.inference_mode():
        out = stolen(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(out).all()
    if name != "surrogate-pretrain":
        assert out.shape == (2, target.feature_dim)


@pytest.mark.parametrize(
    "options",
    [
        {"lam": 0.0},  # StolenEncoder-w/o-aug
        {"views": 3},
        {"normalize_features": True},
        {"optimizer": "sgd", "weight_decay": 5e-4},
        {"optimizer": "lars", "lr": 0.5, "weight_decay": 1e-6},
        {"lr_schedule": "cosine"},
        *({"loss": name} for name in sorted(DISTANCES)),
        {"augment": []},
        {"augment": ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"]},
    ],
)
def test_stolenencoder_options(options, target, surrogate):
    config = AttackConfig(arch="small_cnn", epochs=1, batch_size=12, **options)
    before = target.queries
    stolen = ATTACKS["stolenencoder"](target, surrogate, config, ctx())
    assert target.queries - before == len(surrogate)
    assert stolen.feature_dim == target.feature_dim


def test_stolen_architecture_is_independent_of_the_target(target, surrogate):
    config = AttackConfig(arch="resnet18", stem="imagenet", epochs=1, batch_size=12)
    stolen = ATTACKS["stolenencoder"](target, surrogate, config, ctx())
    assert stolen.arch == "resnet18" and stolen.feature_dim == target.feature_dim


def test_query_aug_with_views_pays_per_view(target, surrogate):
    config = AttackConfig(name="stolenencoder-query-aug", arch="small_cnn", epochs=1, batch_size=12, views=2)
    before = target.queries
    ATTACKS["stolenencoder-query-aug"](target, surrogate, config, ctx())
    assert target.queries - before == len(surrogate) * (1 + 2)


def test_query_aug_without_augmentation_is_refused(target, surrogate):
    with pytest.raises(ConfigError, match="lam=0"):
        ATTACKS["stolenencoder-query-aug"](target, surrogate, AttackConfig(name="stolenencoder-query-aug", lam=0), ctx())


def test_stealing_loss_drops(target, surrogate, tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    config = AttackConfig(arch="small_cnn", epochs=6, batch_size=12, lr=3e-3)
    ATTACKS["stolenencoder"](target, surrogate, config, TrainContext(device=torch.device("cpu"), seed=0, log=log, progress=False))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_follows_its_lr_schedule(name, target, surrogate, tmp_path):
    """Each epoch's last step runs at the cosine curve's value for that step (2 steps per epoch here)."""
    log = MetricsLog(tmp_path / "metrics.jsonl")
    config = AttackConfig(name=name, arch="small_cnn", epochs=3, batch_size=12, lr=1e-3, lr_schedule="cosine")
    ATTACKS[name](target, surrogate, config, TrainContext(device=torch.device("cpu"), seed=0, log=log, progress=False))
    logged = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([scheduled_lr(1e-3, "cosine", 2 * epoch + 1, 6) for epoch in range(3)])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bf16_autocast_trains_every_attack(name, target, surrogate):
    config = AttackConfig(name=name, arch="small_cnn", epochs=1, batch_size=12, augment=["horizontal_flip"])
    context = TrainContext(device=torch.device("cpu"), seed=0, progress=False, precision="bf16")
    stolen = ATTACKS[name](target, surrogate, config, context)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in stolen.parameters())  # weights stay fp32


@pytest.mark.slow
def test_compiled_steal_returns_the_plain_encoder(target, surrogate):
    config = AttackConfig(arch="small_cnn", epochs=1, batch_size=12, augment=["horizontal_flip"])
    context = TrainContext(device=torch.device("cpu"), seed=0, progress=False, compile=True)
    stolen = ATTACKS["stolenencoder"](target, surrogate, config, context)
    assert isinstance(stolen, Encoder)  # not torch.compile's wrapper: it saves and loads like any encoder
