"""Behaviour, not just shape: a small target stolen with a few hundred queries is a working copy, and a
random-init encoder of the same architecture is not."""

from pathlib import Path

import pytest
import torch

from encsteal.attacks import ATTACKS
from encsteal.config import AttackConfig, PretrainConfig, ProbeConfig
from encsteal.data import load_dataset
from encsteal.evaluate import extract_features, probe_accuracy
from encsteal.models import build_encoder
from encsteal.pretrain import pretrain_simclr
from encsteal.target import LocalTarget
from encsteal.training import TrainContext

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world():
    root = Path("unused")
    train = load_dataset("fashion-mnist", "train", root=root, image_size=32)
    test = load_dataset("fashion-mnist", "test", root=root, image_size=32)
    ctx = TrainContext(device=CPU, seed=0, progress=False)
    target_encoder = pretrain_simclr(train.images[:2048], PretrainConfig(arch="small_cnn", epochs=3, batch_size=128), ctx)
    target = LocalTarget(target_encoder, image_size=32, device=CPU)
    surrogate = test.images[5000:5400]  # 400 queries, disjoint from the evaluation images below
    stolen = ATTACKS["stolenencoder"](target, surrogate, AttackConfig(arch="small_cnn", epochs=40, batch_size=64), ctx)
    torch.manual_seed(1)
    random_init = build_encoder("small_cnn", out_dim=target.feature_dim).eval()
    return train, test, target, stolen, random_init


def features(encoder_or_target, images):
    embed = encoder_or_target.embed if isinstance(encoder_or_target, LocalTarget) else LocalTarget(encoder_or_target, image_size=32, device=CPU).embed
    return extract_features(embed, images, 512, "features", progress=False)


def test_stolen_features_are_close_to_the_targets_and_random_ones_are_not(world):
    _, test, target, stolen, random_init = world
    images = test.images[:1000]
    t, s, r = features(target, images), features(stolen, images), features(random_init, images)
    relative_error = lambda other: ((other - t).norm(dim=1) / t.norm(dim=1)).mean().item()
    assert relative_error(s) < 0.5
    assert relative_error(s) < 0.5 * relative_error(r)


def test_the_targets_downstream_classifier_works_on_the_copy(world):
    """Train a probe on target features; feed it the copy's features of the test images. A functional copy
    keeps most of the accuracy, a random encoder falls to about chance."""
    train, test, target, stolen, random_init = world
    train_x = features(target, train.images[:3000])
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    torch.manual_seed(0)
    from encsteal.evaluate.probe import mlp

    probe = mlp(train_x.shape[1], [256], 10)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
    x, y = (train_x - mean) / std, train.labels[:3000]
    for _ in range(30):
        for index in torch.randperm(len(x)).split(128):
            loss = torch.nn.functional.cross_entropy(probe(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    images, labels = test.images[:1000], test.labels[:1000]

    def accuracy(encoder):
        with torch.inference_mode():
            return (probe((features(encoder, images) - mean) / std).argmax(1) == labels).float().mean().item()

    on_target, on_copy, on_random = accuracy(target), accuracy(stolen), accuracy(random_init)
    assert on_target > 0.6
    assert on_copy > 0.75 * on_target
    assert on_random < 0.35
    assert on_copy > on_random + 0.3


def test_stolen_probe_accuracy_beats_random_init(world):
    train, test, target, stolen, random_init = world
    probe = ProbeConfig(epochs=20, lr=1e-3, hidden=[256])
    accuracy = {}
    for name, encoder in {"target": target, "stolen": stolen, "random": random_init}.items():
        train_x, test_x = features(encoder, train.images[:3000]), features(encoder, test.images[:1000])
        accuracy[name] = probe_accuracy(train_x, train.labels[:3000], test_x, test.labels[:1000], 10, probe, seed=0, device=CPU)
    assert accuracy["stolen"] > 0.9 * accuracy["target"], accuracy
