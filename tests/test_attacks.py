"""Every registered attack (and the variants the paper compares) trains on tiny data and pays what it should."""

import json

import pytest
import torch

from encsteal.attacks import ATTACKS, QUERIES_PER_IMAGE
from encsteal.config import AttackConfig, ConfigError
from encsteal.defenses.accounts import AccountRefused
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
    "rda": lambda n, epochs, views: n * 10,  # the clean image and 9 views per image, for its prototype
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_trains_and_pays_what_it_should(name, target, surrogate):
    assert set(EXPECTED_QUERIES) == set(ATTACKS), "add the new attack's query cost here"
    assert set(QUERIES_PER_IMAGE) == set(ATTACKS), "and how many features it buys per image"
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
    if name != "stolenencoder-query-aug":  # the budget's division: what it pays is what it says it buys per image
        assert target.queries - before == len(surrogate) * QUERIES_PER_IMAGE[name](config) * (name != "surrogate-pretrain")


class RefusedHalfWay:
    """A query cache after a refusal: the first images it was ever asked for are answered, every later one is NaN."""

    def __init__(self, target, answered: int) -> None:
        self.target, self.left, self.queries = target, answered, 0
        self.seen: dict[bytes, torch.Tensor] = {}

    def embed(self, images):
        out = self.target.embed(images)
        for index, image in enumerate(images):
            key = image.numpy().tobytes()
            if key not in self.seen:
                self.seen[key] = out[index] if self.left > 0 else torch.full_like(out[index], float("nan"))
                self.left -= 1
            out[index] = self.seen[key]
        return out


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_refused_half_way_trains_on_the_answers_it_has(name, target, surrogate):
    config = AttackConfig(name=name, arch="small_cnn", epochs=1, batch_size=12, augment=["horizontal_flip"])
    stolen = ATTACKS[name](RefusedHalfWay(target, 14), surrogate, config, ctx())
    with torch.inference_mode():
        assert torch.isfinite(stolen(torch.rand(2, 3, 32, 32))).all()
    with pytest.raises(AccountRefused, match="answers for 1 of its"):
        ATTACKS["stolenencoder"](RefusedHalfWay(target, 1), surrogate, config, ctx())


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


class RecordingTarget:
    """The victim, recording every batch of images it is asked about and its answers."""

    def __init__(self, target):
        self.target, self.asked, self.answers = target, [], []

    @property
    def queries(self):
        return self.target.queries

    def embed(self, images):
        self.asked.append(images.clone())
        self.answers.append(self.target.embed(images))
        return self.answers[-1]


@pytest.fixture
def stolen_inputs(monkeypatch):
    """Every batch the encoder being trained (the one in training mode) is given."""
    batches = []
    real_forward = Encoder.forward

    def recording_forward(self, batch):
        if self.training:
            batches.append(batch.detach().float().clone())
        return real_forward(self, batch)

    monkeypatch.setattr(Encoder, "forward", recording_forward)
    return batches


def l2(a, b):
    return (a - b).norm(dim=1).mean()


@pytest.mark.parametrize("name, clean_weight, lam, views", [
    ("stolenencoder", 1.0, 20.0, 1),  # the paper's
    ("stolenencoder", 2.0, 0.5, 3),  # the official code's k views, weights far from 1 and λ/k
    ("stolenencoder", 0.7, 0.0, 1),  # w/o-aug: no view at all
    ("stolenencoder-query-aug", 0.5, 3.0, 2),
])
def test_one_step_loss_is_eq7_by_hand(name, clean_weight, lam, views, target, stolen_inputs):
    """One step (8 images, batch 8): the logged loss is w·d(v, f(x)) + (λ/k)·Σ_j d(v_j, f(A_j x)) computed here from
    what the copy was given, with v = f_t(x) and v_j = v, or, for query-aug, the features bought for view j."""
    surrogate = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    config = AttackConfig(name=name, arch="small_cnn", epochs=1, batch_size=8, clean_weight=clean_weight, lam=lam,
                          views=views, augment=["horizontal_flip", "color_jitter"])
    victim, logged = RecordingTarget(target), []
    ATTACKS[name](victim, surrogate, config, TrainContext(device=torch.device("cpu"), seed=0, progress=False,
                                                          log=logged.append))
    torch.manual_seed(0)  # the copy as the attack initialises it
    initial = build_encoder("small_cnn", out_dim=target.feature_dim).train()
    (batch,) = stolen_inputs
    with torch.no_grad():
        f = initial(batch).tensor_split(1 + (views if lam else 0))
    clean, *augmented = batch.tensor_split(len(f))
    # which surrogate image each clean row is, and its feature bought first: v = f_t(x)
    order = [next(i for i, image in enumerate(surrogate) if torch.equal(image.float() / 255, row)) for row in clean]
    assert victim.asked[0].equal(surrogate)
    v = victim.answers[0][order]
    if name == "stolenencoder-query-aug":
        assert len(victim.asked) == 1 + views
        for view, asked in zip(augmented, victim.asked[1:]):
            assert torch.equal(view, asked.float() / 255)  # the copy trains on the images the target saw
        v_views = victim.answers[1:]
        assert not torch.allclose(v_views[0], v)  # and against what was bought for them, not f_t(x)
    else:
        assert len(victim.asked) == 1  # one query per image
        v_views = [v] * len(augmented)
    expected = clean_weight * l2(v, f[0]) + sum(lam / views * l2(v_j, f_j) for v_j, f_j in zip(v_views, f[1:]))
    (epoch,) = logged
    assert epoch["loss"] == pytest.approx(expected.item(), rel=1e-4)
    if lam:  # the weights on the wrong terms give another loss
        swapped = lam / views * l2(v, f[0]) + sum(clean_weight * l2(v_j, f_j) for v_j, f_j in zip(v_views, f[1:]))
        assert epoch["loss"] != pytest.approx(swapped.item(), rel=1e-2)


def test_surrogate_pretrain_trains_with_the_attacks_optimizer(target, surrogate, monkeypatch):
    from encsteal.attacks import surrogate_pretrain

    given, real = [], surrogate_pretrain.pretrain_simclr

    def recording(images, config, ctx):
        given.append(config)
        return real(images, config, ctx)

    monkeypatch.setattr(surrogate_pretrain, "pretrain_simclr", recording)
    config = AttackConfig(name="surrogate-pretrain", arch="small_cnn", epochs=1, batch_size=12, optimizer="sgd",
                          momentum=0.5, lr=0.05, weight_decay=1e-4)
    ATTACKS["surrogate-pretrain"](target, surrogate, config, ctx())
    (simclr,) = given
    assert (simclr.optimizer, simclr.momentum, simclr.lr, simclr.weight_decay) == ("sgd", 0.5, 0.05, 1e-4)


@pytest.mark.parametrize("update, named", [
    ({"loss": "mse"}, "attack.loss=mse"),
    ({"lam": 0.0, "views": 2}, "attack.lam=0.0, attack.views=2"),
    ({"clean_weight": 0.0}, "attack.clean_weight=0.0"),
    ({"normalize_features": True}, "attack.normalize_features=True"),
])
def test_surrogate_pretrain_refuses_the_objectives_settings(update, named, target, surrogate):
    config = AttackConfig(name="surrogate-pretrain", arch="small_cnn", epochs=1, batch_size=12, **update)
    with pytest.raises(ConfigError, match=f"no use for {named}: leave them out"):
        ATTACKS["surrogate-pretrain"](target, surrogate, config, ctx())
