"""Every stealing loss against closed forms, and every one steals: a few attack epochs on tiny data, loss falling."""

import math

import pytest
import torch

from encsteal.attacks import ATTACKS
from encsteal.config import AttackConfig, ConfigError
from encsteal.losses import (
    LABELLED_LOSSES,
    STEALING_LOSSES,
    barlow_halves,
    barlow_twins,
    infonce,
    mse,
    nt_xent,
    soft_nn,
    stealing_loss,
    supcon,
    wasserstein,
)
from encsteal.models import build_encoder
from encsteal.target import LocalTarget
from encsteal.training import TrainContext


def pair(n=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_mse_known_value():
    assert mse(torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [3.0, 1.0]])).item() == pytest.approx(3.0)  # (1+1+9+1)/4


def test_infonce_with_orthogonal_features_has_its_closed_form():
    n, tau = 4, 0.1
    eye = torch.eye(n)
    # positives have similarity 1, negatives 0: −log(e^{1/τ} / (e^{1/τ} + (n−1)))
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + n - 1))
    assert infonce(eye, eye, temperature=tau).item() == pytest.approx(expected, rel=1e-3)
    assert infonce(eye, eye.roll(1, dims=0), temperature=tau).item() > expected  # the wrong partners cost more


def test_supcon_with_distinct_labels_is_nt_xent():
    target, stolen = pair()
    assert supcon(target, stolen, torch.arange(8), temperature=0.5).item() == pytest.approx(
        nt_xent(stolen, target, temperature=0.5).item(), rel=1e-5)


def test_supcon_rewards_classes_that_cluster():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]])
    mixed = clustered[[0, 2, 1, 3]]
    assert supcon(clustered, clustered, labels, 0.1) < supcon(mixed, mixed, labels, 0.1)


def test_soft_nn_is_small_when_pairs_are_each_others_nearest_neighbours():
    eye = torch.eye(4)
    near = soft_nn(eye, eye + 0.01, temperature=0.1).item()
    assert near < 1e-3
    assert soft_nn(eye, eye.roll(1, dims=0), temperature=0.1).item() > 1.0
    target, stolen = pair()
    swapped = soft_nn(stolen, target, 0.5).item()  # symmetric in its two sets
    assert soft_nn(target, stolen, 0.5).item() == pytest.approx(swapped, rel=1e-5)


def test_wasserstein_closed_forms():
    first, last = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert wasserstein(first, last).item() == pytest.approx(2.0)  # all the mass moves two dimensions along
    assert wasserstein(first, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(1.0)
    assert wasserstein(first, torch.tensor([[0.5, 0.0, 0.5]])).item() == pytest.approx(1.0)  # half of it, two along
    target = pair()[0].abs()
    assert wasserstein(target, 3 * target).item() == pytest.approx(0.0, abs=1e-6)  # only the mass profile counts
    assert wasserstein(target, -target).item() == pytest.approx(0.0, abs=1e-6)  # mass is |feature|
    shuffled = target[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert wasserstein(target, shuffled).item() > 0.1  # paired: each image against its own target vector
    assert wasserstein(torch.cat([first, last]), torch.cat([last, first])).item() == pytest.approx(2.0)  # batch mean


def test_barlow_twins_closed_forms():
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # standardised, uncorrelated dimensions
    assert barlow_twins(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert barlow_twins(x, 3 * x + 2).item() == pytest.approx(0.0, abs=1e-6)  # correlation, not equality
    assert barlow_twins(x, -x).item() == pytest.approx(8.0, rel=1e-5)  # C = −I: Σ (1 − (−1))² = 8


def test_barlow_halves_never_pairs_an_image_with_its_own_target_features():
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    target = torch.cat([x, x])  # 8 images: halves a and b hold the same four vectors
    assert barlow_halves(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # a sign-flipped copy scores as well as an exact one: the stacks [−x; x] are still decorrelated
    assert barlow_halves(target, -target).item() == pytest.approx(0.0, abs=1e-6)
    assert barlow_twins(target, -target).item() == pytest.approx(8.0, rel=1e-5)  # paired Barlow sees it
    with pytest.raises(ValueError, match="at least 4"):
        barlow_halves(x[:3], x[:3])


@pytest.mark.parametrize("name", list(STEALING_LOSSES))
def test_every_loss_is_finite_and_differentiable(name):
    target, stolen = pair()
    stolen.requires_grad_(True)
    loss = stealing_loss(name, temperature=0.5)(target, stolen, torch.arange(8) % 3)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and torch.isfinite(stolen.grad).all()


@pytest.mark.parametrize("name", list(STEALING_LOSSES))
def test_every_loss_falls_when_fitting_a_linear_map(name):
    """A few gradient steps of a linear stolen map towards fixed target features lower every loss."""
    g = torch.Generator().manual_seed(1)
    inputs, target = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    model = torch.nn.Linear(8, 8)
    loss_fn = stealing_loss(name, temperature=0.5)
    labels = torch.arange(32) % 4
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = loss_fn(target, model(inputs), labels).item()
    for _ in range(30):
        loss = loss_fn(target, model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_fn(target, model(inputs), labels).item() < first


@pytest.mark.parametrize("name", list(STEALING_LOSSES))
def test_every_loss_steals_and_its_loss_falls(name, one_thread):
    """Four epochs of two steps against a target of 16 features (with 256, the two Barlow losses cannot fall on
    batches of 16: a 16-row cross-correlation matrix has rank 15 at most)."""
    torch.manual_seed(0)
    target = LocalTarget(build_encoder("small_cnn", "imagenet", out_dim=16), image_size=32, device=torch.device("cpu"))
    surrogate = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 4 if name in LABELLED_LOSSES else None
    config = AttackConfig(arch="small_cnn", stem="imagenet", loss=name, epochs=4, batch_size=16, lr=3e-3,
                          augment=["horizontal_flip"])
    epochs = []
    ctx = TrainContext(device=torch.device("cpu"), seed=0, progress=False, log=epochs.append)
    stolen = ATTACKS["stolenencoder"](target, surrogate, config, ctx, labels=labels)
    assert torch.isfinite(stolen(torch.rand(2, 3, 32, 32))).all()
    assert target.queries == 32
    losses = [epoch["loss"] for epoch in epochs]
    assert len(losses) == 4 and losses[-1] < losses[0], losses


def test_cont_steal_setting_and_refusals(one_thread):
    target = LocalTarget(build_encoder("small_cnn", "imagenet"), image_size=32, device=torch.device("cpu"))
    surrogate = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    ctx = TrainContext(device=torch.device("cpu"), seed=0, progress=False)
    cont_steal = AttackConfig(arch="small_cnn", stem="imagenet", loss="nt-xent", clean_weight=0, lam=1, epochs=1, batch_size=8)
    ATTACKS["stolenencoder"](target, surrogate, cont_steal, ctx)
    with pytest.raises(ConfigError, match="labels"):
        ATTACKS["stolenencoder"](target, surrogate, cont_steal.model_copy(update={"loss": "supcon"}), ctx)
    with pytest.raises(ConfigError, match="at least 4"):
        ATTACKS["stolenencoder"](target, surrogate, cont_steal.model_copy(update={"loss": "barlow-halves", "batch_size": 2}), ctx)
    with pytest.raises(ConfigError, match="nothing to minimise"):
        ATTACKS["stolenencoder"](target, surrogate, cont_steal.model_copy(update={"lam": 0.0}), ctx)
    assert target.queries == 16  # the refusals bought nothing
