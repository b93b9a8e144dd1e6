"""The attacker's pool: what the copy starts from, what it learns from the unbought images, which images it buys,
how the budget divides among several features per image; RDA's prototypes; the pipeline with a pool."""

import json

import pytest
import torch

import encsteal.attacks.pool as pool_module
from conftest import tiny_tree
from encsteal.attacks import ATTACKS
from encsteal.attacks.pool import UnboughtTerm, buy_and_steal, embed, new_copy, uncertainty
from encsteal.attacks.rda import prototypes
from encsteal.augment import build_augmentation
from encsteal.config import AttackConfig, ConfigError, SurrogateConfig, config_from_dict
from encsteal.experiments.pipeline import run_all
from encsteal.models import build_encoder
from encsteal.target import LocalTarget
from encsteal.training import MetricsLog, TrainContext

CPU = torch.device("cpu")
NATURAL = SurrogateConfig(dataset="natural-crops")


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    return LocalTarget(build_encoder("small_cnn"), image_size=32, device=CPU, batch_size=16)


def images(n, seed=1):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def ctx(**kwargs):
    return TrainContext(device=CPU, seed=0, progress=False, **kwargs)


def logged_losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


class RecordingTarget:
    def __init__(self, target):
        self.target, self.asked, self.answers = target, [], []

    @property
    def queries(self):
        return self.target.queries

    def embed(self, batch):
        self.asked.append(batch.clone())
        self.answers.append(self.target.embed(batch))
        return self.answers[-1]


# ------------------------------------------------------------------------------------------ the copy's start


def test_the_copy_starts_from_the_pool_encoders_backbone_or_a_whole_earlier_copy():
    config = AttackConfig(arch="small_cnn", stem="imagenet")
    torch.manual_seed(5)
    simclr = build_encoder("small_cnn", "imagenet")  # a pool encoder: no output layer
    copy = new_copy(config, 64, simclr)
    assert copy.feature_dim == 64
    assert all(torch.equal(a, b) for a, b in zip(copy.backbone.state_dict().values(), simclr.backbone.state_dict().values()))
    again = new_copy(config, 64, copy)  # an earlier round's copy: every weight, the output layer too
    assert torch.equal(again.projection.weight, copy.projection.weight)
    with pytest.raises(ConfigError, match="cannot start from a resnet18"):
        new_copy(config, 64, build_encoder("resnet18", "imagenet"))


# ------------------------------------------------------------------------------------------ unbought images


def test_the_unbought_term_is_ntxent_through_a_head_on_two_views_of_unbought_images():
    from encsteal.losses import nt_xent

    config = AttackConfig(arch="small_cnn", batch_size=8, unbought_weight=0.5, pool_simclr={"temperature": 0.3})
    term = UnboughtTerm(images(20), config, feature_dim=16, device=CPU)
    first, second = term.views()
    assert first.shape == second.shape == (8, 3, 32, 32) and not torch.equal(first, second)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    term.head.eval()
    assert term.loss(a, b).item() == pytest.approx(0.5 * nt_xent(term.head(a), term.head(b), 0.3).item())


@pytest.mark.parametrize("name", ["stolenencoder", "rda"])
def test_attacks_learn_from_unbought_images_and_their_loss_falls(name, target, tmp_path, one_thread):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    config = AttackConfig(name=name, arch="small_cnn", epochs=6, batch_size=12, lr=3e-3, unbought_weight=0.5,
                          prototype_views=2, views=2 if name == "rda" else 1, augment=["horizontal_flip"])
    stolen = ATTACKS[name](target, images(24), config, ctx(log=log), unbought=images(30, seed=2))
    assert stolen.feature_dim == target.feature_dim and not stolen.training
    losses = logged_losses(tmp_path / "metrics.jsonl")
    assert len(losses) == 6 and losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="set surrogate.pool above"):
        ATTACKS[name](target, images(24), config, ctx())


# ------------------------------------------------------------------------------------------ buying views


def test_bought_views_cost_a_query_each_and_train_on_their_own_features(target, monkeypatch):
    from encsteal.attacks import stolenencoder

    victim, trained_on = RecordingTarget(target), []
    real_train = stolenencoder._train

    def recording_train(features, surrogate, *args, **kwargs):
        trained_on.append((features, surrogate))
        return real_train(features, surrogate, *args, **kwargs)

    monkeypatch.setattr(stolenencoder, "_train", recording_train)
    surrogate = images(10)
    config = AttackConfig(arch="small_cnn", epochs=1, batch_size=10, bought_views=2,
                          bought_augment=["random_resized_crop", "color_jitter"], bought_crop_scale=(0.5, 0.5))
    ATTACKS["stolenencoder"](victim, surrogate, config, ctx())
    (asked,) = victim.asked
    assert len(asked) == 30 and torch.equal(asked[:10], surrogate)  # the clean images and two views of each
    assert not torch.equal(asked[10:20], surrogate) and not torch.equal(asked[10:20], asked[20:])
    features, trained = trained_on[0]
    assert torch.equal(trained, asked) and torch.equal(features, victim.answers[0])  # each view with its feature
    victim.asked.clear()
    ATTACKS["stolenencoder"](victim, surrogate, config, ctx())
    assert torch.equal(victim.asked[0], asked)  # seeded: a resumed run buys the same views (the cache has them)


def test_rda_prototypes_average_the_unit_features_of_the_clean_image_and_its_views(target):
    victim = RecordingTarget(target)
    surrogate = images(6)
    config = AttackConfig(name="rda", arch="small_cnn", prototype_views=3, bought_augment=["horizontal_flip", "grayscale"])
    p = prototypes(victim, surrogate, config, ctx())
    (asked,) = victim.asked
    assert len(asked) == 18 and torch.equal(asked[:6], surrogate)
    unit = torch.nn.functional.normalize(victim.answers[0], dim=1)
    assert torch.allclose(p, (unit[:6] + unit[6:12] + unit[12:]) / 3, atol=1e-6)
    assert (p.norm(dim=1) <= 1 + 1e-6).all()


def test_rda_refuses_stolenencoders_objective_settings(target):
    with pytest.raises(ConfigError, match="attack.lam=1.0"):
        ATTACKS["rda"](target, images(8), AttackConfig(name="rda", arch="small_cnn", lam=1.0), ctx())


def test_rda_loss_falls(target, tmp_path, one_thread):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    config = AttackConfig(name="rda", arch="small_cnn", epochs=6, batch_size=12, lr=3e-3, views=2, prototype_views=2,
                          temperature=0.2, augment=["horizontal_flip", "color_jitter"])
    ATTACKS["rda"](target, images(24), config, ctx(log=log))
    losses = logged_losses(tmp_path / "metrics.jsonl")
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------ choosing what to buy


class RecordingSteal:
    """An attack that records what it was given and returns a fresh copy."""

    def __init__(self):
        self.calls = []

    def __call__(self, target, surrogate, config, ctx, labels=None, *, unbought=None, init=None):
        self.calls.append({"surrogate": surrogate, "epochs": config.epochs, "unbought": unbought, "init": init,
                           "labels": labels, "ctx": ctx})
        torch.manual_seed(len(self.calls))
        return build_encoder(config.arch, config.stem, out_dim=8)


def contexts(stage, recipe):
    return ctx(recipe=recipe)


def test_random_selection_buys_the_pools_first_images_and_hands_over_the_rest(tmp_path):
    pool, labels = images(20), torch.arange(20)
    steal = RecordingSteal()
    _, bought = buy_and_steal(steal, None, pool, labels, 8, AttackConfig(arch="small_cnn"), NATURAL,
                              ctx=ctx(), context=contexts, encoder_dir=tmp_path)
    (call,) = steal.calls
    assert bought.tolist() == list(range(8)) and torch.equal(call["surrogate"], pool[:8])
    assert torch.equal(call["unbought"], pool[8:]) and call["labels"].tolist() == list(range(8))
    buy_and_steal(steal, None, pool[:8], labels[:8], 8, AttackConfig(arch="small_cnn"), NATURAL,
                  ctx=ctx(), context=contexts, encoder_dir=tmp_path)
    assert steal.calls[-1]["unbought"] is None  # nothing left unbought


def test_the_pool_encoder_is_trained_once_and_embeds_the_pool_for_k_center(tmp_path, monkeypatch, one_thread):
    trained, real = [], pool_module.pretrain_simclr
    monkeypatch.setattr(pool_module, "pretrain_simclr", lambda *args: trained.append(1) or real(*args))
    pool = images(24)
    attack = AttackConfig(arch="small_cnn", stem="imagenet", init="pool-simclr", pool_simclr={"epochs": 1, "batch_size": 12})
    surrogate = SurrogateConfig(dataset="natural-crops", selection="k-center")
    steal = RecordingSteal()
    _, bought = buy_and_steal(steal, None, pool, None, 5, attack, surrogate, ctx=ctx(), context=contexts,
                              encoder_dir=tmp_path)
    encoder = steal.calls[0]["init"]
    assert encoder is not None and encoder.arch == "small_cnn" and len(list(tmp_path.glob("pool-simclr-*.safetensors"))) == 1
    from encsteal.attacks.selection import k_center

    assert bought.tolist() == k_center(5, 24, embeddings=embed(encoder, pool, CPU)).tolist()
    buy_and_steal(steal, None, pool, None, 5, attack, surrogate, ctx=ctx(), context=contexts, encoder_dir=tmp_path)
    assert len(trained) == 1  # the second budget reuses the encoder of the same pool
    assert torch.equal(steal.calls[1]["init"].backbone[0].weight, encoder.backbone[0].weight)


def test_uncertainty_scores_images_whose_views_move_the_copys_features():
    torch.manual_seed(0)
    copy = build_encoder("small_cnn", "imagenet")
    flat = torch.full((4, 3, 32, 32), 120, dtype=torch.uint8)  # a flip changes nothing
    noisy = images(4)
    scores = uncertainty(copy, torch.cat([flat, noisy]), build_augmentation(["horizontal_flip"], 32), CPU, views=8)
    assert scores[:4].abs().max() < 1e-5 and (scores[4:] > 1e-4).all()


def test_uncertainty_buys_in_rounds_what_the_last_copy_is_least_sure_of(tmp_path, monkeypatch):
    pool = images(40)
    scores = torch.linspace(0, 1, 40)  # the copy is least sure of the pool's last images
    monkeypatch.setattr(pool_module, "uncertainty", lambda copy, batch, augment, device: scores)
    steal = RecordingSteal()
    attack = AttackConfig(arch="small_cnn", stem="imagenet", epochs=10)
    copy, bought = buy_and_steal(steal, None, pool, None, 12, attack, SurrogateConfig(dataset="natural-crops", selection="uncertainty", rounds=3),
                                 ctx=ctx(), context=contexts, encoder_dir=tmp_path)
    sizes = [len(call["surrogate"]) for call in steal.calls]
    assert sizes == [4, 8, 12] and sum(call["epochs"] for call in steal.calls) == 10
    assert bought.tolist() == [0, 1, 2, 3, 39, 38, 37, 36, 35, 34, 33, 32]  # first at random, then the least sure
    assert steal.calls[1]["init"] is not None and steal.calls[0]["init"] is None  # each round goes on from the last
    assert steal.calls[1]["ctx"].recipe["round"] == 1


# ------------------------------------------------------------------------------------------ config and pipeline


def test_new_settings_stay_out_of_the_recipes_at_their_defaults():
    before = {"name", "arch", "stem", "loss", "clean_weight", "lam", "views", "normalize_features", "augment", "epochs",
              "lr", "lr_schedule", "batch_size", "optimizer", "weight_decay", "momentum", "temperature"}
    assert set(AttackConfig().recipe()) == before
    assert set(SurrogateConfig(dataset="natural-crops").recipe()) == {"scenario", "dataset", "split", "size"}
    cached = AttackConfig(pool_simclr={"epochs": 5, "cache": "/somewhere"}).recipe()
    assert cached["pool_simclr"]["epochs"] == 5 and "cache" not in cached["pool_simclr"]
    assert "pool_simclr" not in AttackConfig(pool_simclr={"cache": "/somewhere"}).recipe()
    with pytest.raises(ConfigError, match="attack.pool_simclr.epochs"):
        config_from_dict(tiny_tree(surrogate={"selection": "k-center"}))
    with pytest.raises(ConfigError, match="unknown selection 'coreset'"):
        config_from_dict(tiny_tree(surrogate={"selection": "coreset"}))


def test_a_run_with_a_pool_buys_from_it_and_keeps_all_of_it_out_of_the_test_set(tmp_path, one_thread):
    tree = tiny_tree(run_dir=str(tmp_path / "run"),
                     surrogate={"scenario": "same-distribution", "dataset": None, "split": "test", "size": 40, "pool": 90},
                     attack={"name": "rda", "arch": "small_cnn", "epochs": 1, "batch_size": 8, "prototype_views": 4,
                             "views": 1, "augment": ["horizontal_flip"]},
                     evaluate={"downstream": [{"dataset": "digits", "train_limit": 64}],
                               "probe": {"epochs": 2, "lr": 1e-3, "hidden": [16]}, "batch_size": 64, "random_inits": 1})
    results = run_all(config_from_dict(tree), progress=False)
    assert results["queries"] == 40  # 10 images of the budget's 40 queries, 4 features each
    assert results["surrogate"]["images"] == 10 and results["surrogate"]["count"] == 90
    assert results["downstream"]["digits"]["queried_images_held_out"] == 90  # the whole pool left the test set
    stolen = json.loads((tmp_path / "run" / "stolen.json").read_text())
    assert stolen["surrogate"]["bought"] == stolen["surrogate"]["indices"][:10]
    with pytest.raises(ConfigError, match="fewer than the 4 features"):
        run_all(config_from_dict({**tree, "run_dir": str(tmp_path / "tiny"), "surrogate": {**tree["surrogate"], "size": 3}}),
                progress=False)


def test_a_grayscale_pool_is_gray_and_otherwise_the_same_draw(tmp_path):
    from encsteal.data.surrogate import gray, surrogate_images

    pretraining = {"dataset": "digits", "split": "train", "limit": None, "seed": 0, "count": 1000}
    colour = SurrogateConfig(dataset="natural-crops", size=20, pool=50)
    pool, record = surrogate_images(colour, pretraining, 0, root=tmp_path, image_size=32)
    grey, grey_record = surrogate_images(colour.model_copy(update={"grayscale": True}), pretraining, 0, root=tmp_path,
                                         image_size=32)
    assert record == grey_record and len(pool) == 50 and record["images"] == 20
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all() and torch.equal(grey, gray(pool))
    pixel = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1)
    assert gray(pixel).flatten().tolist() == [round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)] * 3
    assert "grayscale" not in colour.recipe() and colour.model_copy(update={"grayscale": True}).recipe()["grayscale"]
