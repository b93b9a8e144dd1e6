"""The account-aware defenses in-process: B4B's coverage, noise and per-account transforms, proof-of-work puzzles,
stealing detection, and the simulated accounts that carry their states."""

import math
import time

import numpy as np
import pytest
import torch

from encsteal.defenses import ACCOUNT_AWARE, DEFENSES, SimulatedAccounts, build_defense, describe, identity, parse_defense
from encsteal.defenses.accounts import AccountRefused, slots
from encsteal.defenses.b4b import B4BConfig, noise_scale
from encsteal.defenses.detection import Detection
from encsteal.defenses.proof_of_work import PowConfig, PuzzleError, ProofOfWork, check, hashes_per_image, solve
from encsteal.models import build_encoder
from encsteal.target import LocalTarget, SybilTarget

from streams import natural, synthetic

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("small_cnn", "imagenet").eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def target(encoder, spec: str, account: str, accounts: SimulatedAccounts, batch_size: int = 16) -> LocalTarget:
    defense = build_defense(parse_defense(spec), CPU, 32)
    return LocalTarget(encoder, image_size=32, device=CPU, batch_size=batch_size, defenses=[defense], account=account,
                       accounts=accounts)


def figures(accounts: SimulatedAccounts, account: str, slot: str) -> dict:
    return accounts.figures(account)[slot]


def test_b4b_noise_follows_the_papers_calibration():
    config = B4BConfig(alpha=0.8, beta=80, lam=1e-6)
    assert noise_scale(config, 0.0) == 0.0
    assert noise_scale(config, 80.0) == pytest.approx(0.8 - 1e-6)
    assert noise_scale(config, 40.0) == pytest.approx(1e-6 * (math.sqrt(0.8 / 1e-6) - 1))
    assert noise_scale(config, 20.0) < noise_scale(config, 40.0) < noise_scale(config, 60.0)
    assert noise_scale(B4BConfig(beta=2, max_sigma=50), 100.0) == 50  # no overflow far beyond beta


def test_coverage_and_noise_grow_with_an_accounts_queries_and_not_with_anothers(encoder, one_thread):
    accounts = SimulatedAccounts()
    spec = "b4b:beta=5,alpha=1,bits=6,projections=4,transform=none"
    busy, quiet = (target(encoder, spec, name, accounts) for name in ("busy", "quiet"))
    quiet.embed(images(16, seed=99))
    before = figures(accounts, "quiet", "b4b")
    seen = []
    for seed in range(6):
        busy.embed(images(16, seed=seed))
        seen.append(figures(accounts, "busy", "b4b"))
    assert [f["queries"] for f in seen] == [16 * (i + 1) for i in range(6)]
    coverage = [f["coverage"] for f in seen]
    assert coverage == sorted(coverage) and coverage[-1] > coverage[0]
    assert seen[-1]["sigma"] > seen[0]["sigma"]
    assert figures(accounts, "quiet", "b4b") == before  # the other account's state did not move
    # a fresh account asking the busy account's last images gets them with less noise
    last = images(16, seed=5)
    clean = LocalTarget(encoder, image_size=32, device=CPU, batch_size=16).embed(last)
    noisy_busy = target(encoder, spec, "busy", accounts).embed(last)
    noisy_fresh = target(encoder, spec, "fresh", SimulatedAccounts()).embed(last)
    assert (noisy_busy - clean).norm() > (noisy_fresh - clean).norm()


def test_per_account_transforms_differ_between_accounts_and_are_stable(encoder, one_thread):
    spec = "b4b:beta=100,pad=8,secret=1234"
    batch = images(8)
    shared = SimulatedAccounts()
    alice = target(encoder, spec, "alice", shared).embed(batch)
    bob = target(encoder, spec, "bob", shared).embed(batch)
    assert alice.shape == (8, 256 + 8)
    assert not torch.allclose(alice, bob, atol=1e-3)
    # stable: the same account on another target object (another worker, a restart) answers alike
    again = target(encoder, spec, "alice", SimulatedAccounts()).embed(batch)
    torch.testing.assert_close(again, alice)
    # the transform is affine per dimension, padded and shuffled: a classifier on standardised features sees
    # the same data up to those maps, so the clean features are recovered by a least-squares fit
    clean = LocalTarget(encoder, image_size=32, device=CPU).embed(images(300, seed=7))
    mapped = target(encoder, spec, "carol", SimulatedAccounts(), batch_size=300).embed(images(300, seed=7))
    design = torch.cat([mapped, torch.ones(len(mapped), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, clean.double()).solution
    torch.testing.assert_close((design @ solution).float(), clean, atol=1e-3, rtol=1e-3)


def test_simulated_accounts_persist_in_their_file(encoder, tmp_path, one_thread):
    path = tmp_path / "accounts.json"
    spec = "b4b:beta=5,bits=6,projections=4"
    target(encoder, spec, "a", SimulatedAccounts(path)).embed(images(32))
    reopened = SimulatedAccounts(path)
    assert figures(reopened, "a", "b4b")["queries"] == 32
    target(encoder, spec, "a", reopened).embed(images(16, seed=3))
    assert figures(SimulatedAccounts(path), "a", "b4b")["queries"] == 48


def test_puzzles_are_bound_to_account_body_and_size_and_expire():
    pow_ = ProofOfWork(PowConfig(base=64, factor=10, beta=10))
    challenge = pow_.challenge("alice", None, "d" * 64, 4, now=1000.0)
    assert challenge.hashes == 4 * 64
    nonce, tries = solve(challenge)
    assert tries == nonce + 1
    check(challenge, nonce, "alice", "d" * 64, 4, now=1001.0)
    for account, digest, count, now, message in [("bob", "d" * 64, 4, 1001.0, "another account"),
                                                 ("alice", "e" * 64, 4, 1001.0, "another request body"),
                                                 ("alice", "d" * 64, 5, 1001.0, "for 4 images"),
                                                 ("alice", "d" * 64, 4, 1000.0 + 301, "expired")]:
        with pytest.raises(PuzzleError, match=message):
            check(challenge, nonce, account, digest, count, now=now)
    wrong = next(n for n in range(nonce + 1, nonce + 10**6) if not _solves(challenge, n))
    with pytest.raises(PuzzleError, match="wrong"):
        check(challenge, wrong, "alice", "d" * 64, 4, now=1001.0)


def _solves(challenge, nonce) -> bool:
    try:
        check(challenge, nonce, challenge.account, challenge.digest, challenge.images, now=challenge.expires - 1)
        return True
    except PuzzleError:
        return False


def test_puzzle_work_grows_with_coverage(encoder, one_thread):
    config = PowConfig(base=50, factor=100, beta=3, bits=6, projections=4)
    assert hashes_per_image(config, 0) == 50 and hashes_per_image(config, 3) == pytest.approx(5000)
    assert hashes_per_image(config, 30) == hashes_per_image(config, 3)
    accounts = SimulatedAccounts()
    attacker = target(encoder, "pow:base=50,factor=100,beta=3,bits=6,projections=4", "attacker", accounts)
    first = attacker.embed(images(16))
    torch.testing.assert_close(first, LocalTarget(encoder, image_size=32, device=CPU).embed(images(16)))  # unchanged
    defense = attacker.model.defenses[0]
    asked = [defense.challenge("attacker", None, "d" * 64, 16).hashes]  # a new account's first request
    for seed in range(1, 4):
        attacker.embed(images(16, seed=seed))
        asked.append(defense.challenge("attacker", accounts.account("attacker").states["pow"], "d" * 64, 16).hashes)
    assert asked[0] == 16 * 50 and asked == sorted(asked) and asked[-1] > asked[0]
    assert figures(accounts, "attacker", "pow")["hashes_per_image"] == pytest.approx(asked[-1] / 16, rel=1e-3)
    assert accounts.account("attacker").pow_hashes == attacker.pow_hashes > 0 and attacker.pow_seconds > 0
    assert defense.challenge("other", accounts.account("other").states.get("pow"), "d" * 64, 16).hashes == 16 * 50


def test_detection_flags_a_stealing_stream_and_not_a_benign_one(encoder, one_thread):
    accounts = SimulatedAccounts()
    spec = "detection:prada_threshold=0.9,min_queries=50"
    benign, thief = (target(encoder, spec, name, accounts, batch_size=50) for name in ("benign", "thief"))
    benign.embed(natural(300, seed=1))
    thief.embed(synthetic(300, seed=2))
    assert figures(accounts, "benign", "detection")["flagged"] == 0.0
    assert figures(accounts, "benign", "detection")["prada_w"] > 0.9
    assert figures(accounts, "thief", "detection")["flagged"] == 1.0


def test_refuse_policy_refuses_a_flagged_account_and_no_other(encoder, one_thread):
    accounts = SimulatedAccounts()
    spec = "detection:prada_threshold=null,coverage_threshold=1,bits=4,projections=2,policy=refuse"
    thief = target(encoder, spec, "thief", accounts)
    thief.embed(images(16))  # answered; this request's buckets put it over the threshold
    assert Detection.flagged(accounts.account("thief").states["detection"])
    with pytest.raises(AccountRefused, match="thief"):
        thief.embed(images(16, seed=1))
    target(encoder, spec, "other", accounts).embed(images(1))


def test_throttle_policy_spaces_a_flagged_accounts_requests_and_the_client_waits(encoder, one_thread):
    accounts = SimulatedAccounts()
    spec = "detection:prada_threshold=null,coverage_threshold=1,bits=4,projections=2,policy=throttle,throttle_rate=5"
    thief = target(encoder, spec, "thief", accounts)
    started = time.monotonic()
    thief.embed(images(16))  # answered at once, and flagged
    assert thief.wait_seconds == 0 and Detection.flagged(accounts.account("thief").states["detection"])
    thief.embed(images(48, seed=1))  # three requests, each 1/5 s after the one before
    times = [request["time"] for request in accounts.account("thief").history]
    assert all(later - earlier >= 0.2 - 1e-3 for earlier, later in zip(times, times[1:]))
    assert 0.4 < thief.wait_seconds <= time.monotonic() - started and len(times) == 4
    assert accounts.account("thief").wait_seconds == thief.wait_seconds
    other = target(encoder, spec, "other", accounts)
    other.embed(images(1))
    assert other.wait_seconds == 0  # no other account waits


def test_sybil_target_spreads_requests_over_its_accounts(encoder, one_thread):
    accounts = SimulatedAccounts()
    spec = "b4b:beta=50,bits=6,projections=4"
    sybils = SybilTarget([target(encoder, spec, f"attacker-{i}", accounts) for i in range(1, 5)])
    for seed in range(8):
        sybils.embed(images(16, seed=seed))
    assert sybils.queries == 128
    assert [figures(accounts, f"attacker-{i}", "b4b")["queries"] for i in range(1, 5)] == [32.0] * 4


@pytest.mark.parametrize("config", ACCOUNT_AWARE)
def test_account_aware_specs_read_back_and_hide_their_secret(config):
    name = config.model_fields["name"].default
    assert name in DEFENSES
    parsed = parse_defense(f"{name}:secret=42,bits=8")
    assert "secret=***" in describe([parsed]) and "42" not in identity([parsed])
    assert parse_defense(describe([parsed]).replace("secret=***", "secret=42")) == parsed


def test_slots_name_repeated_defenses_apart():
    built = [build_defense(parse_defense(spec), CPU, 32) for spec in ("top-k:k=3", "b4b:beta=9", "b4b:beta=10", "pow")]
    assert slots(built) == [None, "b4b", "b4b.2", "pow"]


def test_states_of_other_settings_are_counted_afresh():
    a = build_defense(parse_defense("b4b:bits=6,projections=4"), CPU, 32)
    state = a.answer(torch.rand(4, 3, 32, 32), torch.randn(4, 16), "x", None).state
    b = build_defense(parse_defense("b4b:bits=8,projections=4"), CPU, 32)
    answer = b.answer(torch.rand(4, 3, 32, 32), torch.randn(4, 16), "x", state)
    assert np.isfinite(answer.figures["coverage"]) and answer.figures["coverage"] <= 100 * 4 / 256
