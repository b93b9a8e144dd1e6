"""Every defense: its definition on known values, its bounds, its determinism, and parity over HTTP."""

import pytest
import torch

from encsteal.checkpoint import load_encoder, save_encoder
from encsteal.defenses import (DEFENSES, SECRET_MASK, DefendedEncoder, build_defense, describe, identity,
                               is_account_aware, parse_defense)
from encsteal.defenses.poisoning import FeaturePoisoning, PoisoningConfig
from encsteal.losses import DISTANCES
from encsteal.models import build_encoder
from encsteal.service.client import HttpTarget
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings
from encsteal.target import LocalTarget

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shadow(tmp_path_factory):
    torch.manual_seed(1)
    return save_encoder(build_encoder("small_cnn", "imagenet"), tmp_path_factory.mktemp("shadow") / "shadow.safetensors",
                        {"role": "shadow", "image_size": 32})


def spec_of(name: str, shadow) -> str:
    return {"top-k": "top-k:k=8", "rounding": "rounding:decimals=1", "noise": "noise:sigma=0.2",
            "poisoning": f"poisoning:epsilon=0.5,shadow={shadow}", "b4b": "b4b:beta=2,pad=4,bits=6,projections=4",
            "pow": "pow:base=20,bits=6,projections=4", "detection": "detection:min_queries=3"}[name]


def batch(n=6, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(DEFENSES))
def test_every_defense_parses_builds_and_answers_finite_features(name, shadow, one_thread):
    config = parse_defense(spec_of(name, shadow))
    # the description reads back (but for the secret it masks)
    assert parse_defense(describe([config]).replace(f"secret={SECRET_MASK}", "secret=0")) == config
    defense = build_defense(config, CPU, 32)
    features = torch.randn(6, 256)
    if is_account_aware(defense):  # a new account's first request, twice: the same answer
        answer = defense.answer(batch(), features, "someone", None)
        out, again = answer.features, defense.answer(batch(), features, "someone", None).features
        assert out.shape == (6, 256 + defense.extra_dims) and answer.state and answer.figures["queries"] == 6
    else:
        out, again = defense(batch(), features), defense(batch(), features)
        assert out.shape == features.shape
    assert torch.isfinite(out).all()
    assert torch.equal(again, out)  # the same images get the same answer


def test_top_k_keeps_the_k_largest_magnitudes():
    features = torch.tensor([[0.1, -3.0, 2.0, 0.5], [1.0, 1.5, -0.2, -4.0]])
    out = build_defense(parse_defense("top-k:k=2"), CPU, 32)(batch(2), features)
    assert torch.equal(out, torch.tensor([[0.0, -3.0, 2.0, 0.0], [0.0, 1.5, 0.0, -4.0]]))
    assert torch.equal(build_defense(parse_defense("top-k:k=9"), CPU, 32)(batch(2), features), features)


def test_rounding_to_m_decimals():
    out = build_defense(parse_defense("rounding:decimals=2"), CPU, 32)(batch(1), torch.tensor([[0.0123, -1.236, 5.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.01, -1.24, 5.0]]))


def test_noise_is_relative_to_the_feature_scale_and_fixed_per_image():
    defense = build_defense(parse_defense("noise:sigma=0.1"), CPU, 32)
    features = 7.0 * torch.randn(4, 4096, generator=torch.Generator().manual_seed(0))
    images = batch(4)
    noise = defense(images, features) - features
    rms = features.norm(dim=1) / 64
    torch.testing.assert_close(noise.std(dim=1), 0.1 * rms, rtol=0.05, atol=0)
    assert not torch.allclose(noise[0], noise[1])
    again = defense(images[[1, 0]], features[[1, 0]]) - features[[1, 0]]
    torch.testing.assert_close(again, noise[[1, 0]])  # order and batch do not matter, the image does
    other_secret = build_defense(parse_defense("noise:sigma=0.1,secret=5"), CPU, 32)
    assert not torch.allclose(other_secret(images, features), features + noise)


@pytest.mark.parametrize("norm,epsilon", [("2", 0.5), ("inf", 0.05)])
def test_poisoning_stays_in_its_ball_and_raises_the_attack_loss(norm, epsilon, shadow, one_thread):
    config = PoisoningConfig(epsilon=epsilon, norm=norm, shadow=shadow, steps=20)
    defense = FeaturePoisoning(config, CPU, 32)
    images = batch(8)
    target, _ = load_encoder(shadow)  # any encoder serves as f_t here
    torch.manual_seed(3)
    features = build_encoder("small_cnn", "imagenet").eval()(images).detach()
    poisoned = defense(images, features)
    delta = poisoned - features
    size = delta.norm(dim=1) if norm == "2" else delta.abs().amax(dim=1)
    assert (size <= epsilon * (1 + 1e-4)).all() and (size >= 0.9 * epsilon).all()  # on the surface

    clean, views = defense.shadow(images).detach(), defense.shadow(defense._augmented(images)).detach()

    def attack_loss(v):
        return (DISTANCES["l2"](v, clean) + config.lam * DISTANCES["l2"](v, views)).item()

    random_delta = torch.randn_like(features)
    random_delta = random_delta * epsilon / (random_delta.norm(dim=1, keepdim=True) if norm == "2" else random_delta.abs().amax(dim=1, keepdim=True))
    assert attack_loss(poisoned) > attack_loss(features + random_delta) > attack_loss(features) - 1e-3


def test_defended_local_target_applies_defenses_in_order(one_thread):
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", "imagenet")
    topk, rounding = (build_defense(parse_defense(s), CPU, 32) for s in ("top-k:k=4", "rounding:decimals=1"))
    target = LocalTarget(encoder, image_size=32, device=CPU, defenses=[topk, rounding])
    uint8 = (batch(3) * 255).round().to(torch.uint8)
    out = target.embed(uint8)
    assert ((out != 0).sum(dim=1) <= 4).all()
    with torch.inference_mode():
        expected = DefendedEncoder(encoder, [topk, rounding])(uint8.float() / 255)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", list(DEFENSES))
def test_served_defenses_answer_like_the_local_ones(name, shadow, tmp_path, one_thread):
    torch.manual_seed(0)
    checkpoint = save_encoder(build_encoder("small_cnn", "imagenet"), tmp_path / "t.safetensors", {"image_size": 32})
    config = parse_defense(spec_of(name, shadow))
    ledger = Ledger(tmp_path / "accounts.sqlite")
    key = ledger.create_account("researcher")
    images = (batch(12, seed=4) * 255).round().to(torch.uint8)
    settings = ServeSettings(checkpoint=checkpoint, db=str(tmp_path / "accounts.sqlite"), defenses=[config], threads=1)
    with ServerProcess(settings) as server:
        remote = HttpTarget(server.url, key, batch_size=5).embed(images)
    encoder, _ = load_encoder(checkpoint)
    # the same account asking in the same requests: account-aware defenses answer alike in-process
    local = LocalTarget(encoder, image_size=32, device=CPU, batch_size=5, defenses=[build_defense(config, CPU, 32)],
                        account="researcher").embed(images)
    torch.testing.assert_close(remote, local, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["noise", "poisoning"])
def test_secrets_are_masked_in_descriptions_and_keyed_hashes_in_identities(name, shadow):
    secret, other = 918273645, 5
    first, second = (parse_defense(f"{spec_of(name, shadow)},secret={value}") for value in (secret, other))
    assert describe([first]) == describe([second]) and f"secret={SECRET_MASK}" in describe([first])
    assert str(secret) not in identity([first]) and identity([first]) != identity([second])
    assert identity([first]) == identity([parse_defense(f"{spec_of(name, shadow)},secret={secret}")])
    if name == "noise":  # the default secret as it was, so that recipes and caches made before still match
        assert identity([parse_defense("noise:sigma=0.2")]) == "noise:sigma=0.2,secret=0"
    with pytest.raises(ValueError, match="secret"):
        parse_defense(f"{spec_of(name, shadow)},secret={2**63}")  # what the per-image seeds take


def test_a_shadow_encoder_is_identified_by_its_weights(tmp_path):
    path = tmp_path / "shadow.safetensors"
    torch.manual_seed(0)
    save_encoder(build_encoder("small_cnn", "imagenet"), path, {"role": "shadow", "image_size": 32})
    config = parse_defense(f"poisoning:epsilon=0.5,shadow={path}")
    before = identity([config])
    torch.manual_seed(1)
    save_encoder(build_encoder("small_cnn", "imagenet"), path, {"role": "shadow", "image_size": 32})
    assert identity([config]) != before  # another shadow at the same path: another defense
    assert str(path) not in before
