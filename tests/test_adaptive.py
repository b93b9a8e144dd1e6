"""Adaptive attackers (encsteal.attacks.adaptive), each against a small defended target of the kind it is meant
for, beside the attacker that does not adapt. At this size a copy's G moves by more from one seed to the next than
between the two attackers, so the tests compare what each attacker gets to train on (its answers against the
target's clean features) or whether it is stopped; the matrix (docs/matrix.md) measures G at demo scale."""


import pytest
import torch

from encsteal.attacks.adaptive import (ADAPTIVE, AlignedSybils, Aligner, AveragingTarget, CoverTarget, PacedAccounts,
                                       RecoveringTarget, extra_queries)
from encsteal.attacks.adaptive.align import fit_affine
from encsteal.attacks.adaptive.average import near_duplicates
from encsteal.checkpoint import load_encoder, read_sidecar, sidecar_path
from encsteal.config import DataConfig, config_from_dict
from encsteal.data import load_dataset
from encsteal.defenses import SimulatedAccounts, build_defense, parse_defense
from encsteal.defenses.accounts import AccountRefused
from encsteal.experiments.pipeline import (Run, kept_anchors_dir, pretrain, run_all, simulated_accounts_path,
                                           steal)
from encsteal.query_cache import CachedTarget, QueryCache
from encsteal.target import LocalTarget, SybilTarget, answered

from conftest import tiny_checkpoint, tiny_tree

CPU = torch.device("cpu")
REQUEST = 50


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, one_thread):
    return load_encoder(tiny_checkpoint(tmp_path_factory.mktemp("adaptive") / "target.safetensors"), CPU)[0]


@pytest.fixture(scope="module")
def images():
    root = DataConfig().resolved_root()
    return {"digits": load_dataset("digits", "train", root=root, image_size=32).images,
            "crops": load_dataset("natural-crops", "train", root=root, image_size=32).images[:2000]}


def defended(encoder, *specs: str, account: str = "attacker", accounts: SimulatedAccounts | None = None) -> LocalTarget:
    return LocalTarget(encoder, image_size=32, device=CPU, batch_size=REQUEST, account=account,
                       defenses=[build_defense(parse_defense(spec), CPU, 32) for spec in specs],
                       accounts=accounts if accounts is not None else SimulatedAccounts())


def ask(target, images: torch.Tensor) -> torch.Tensor:
    """The images in requests of REQUEST, as the query cache sends them."""
    return torch.cat([target.embed(part) for part in images.split(REQUEST)])


def error(answers: torch.Tensor, clean: torch.Tensor) -> float:
    return float((answers - clean).norm() / clean.norm())


def test_aligned_sybils_pool_answers_of_one_space_where_plain_sybils_pool_three(encoder, images):
    """B4B gives each of three sybil accounts its own transformed space (noise still off at this coverage). Plain
    sybils train on answers that disagree with each other; aligned ones on answers in the first account's space."""
    b4b = "b4b:beta=100,alpha=0.01,bits=6,projections=4,pad=4,secret=5"
    accounts = SimulatedAccounts()
    sybils = [defended(encoder, b4b, account=f"s{i}", accounts=accounts) for i in range(3)]
    anchors, queries = images["digits"][:300], images["digits"][300:600]
    aligned = ask(AlignedSybils(sybils, Aligner(anchors)), queries)
    plain = ask(SybilTarget([defended(encoder, b4b, account=f"p{i}") for i in range(3)]), queries)
    reference = ask(defended(encoder, b4b, account="s0"), queries)  # the first account's space, same secret
    assert error(aligned, reference) < 0.05
    assert error(plain, reference) > 0.5
    assert sum(target.queries for target in sybils) == 3 * 300 + 300


def test_affine_fit_undoes_a_scale_shift_and_shuffle():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(200, 16, generator=generator)
    mapped = source[:, torch.randperm(16, generator=generator)] * 3 - 1
    weights, bias = fit_affine(mapped, source)
    assert torch.allclose(mapped @ weights + bias, source, atol=1e-2)


def test_averaged_near_duplicates_halve_the_noise_of_single_answers(encoder, images):
    x = images["digits"][:400]
    clean = ask(defended(encoder), x)
    single = ask(defended(encoder, "noise:sigma=1.0,secret=3"), x)
    averaged = ask(AveragingTarget(defended(encoder, "noise:sigma=1.0,secret=3"), repeats=4, jitter=2), x)
    assert error(averaged, clean) < 0.6 * error(single, clean)
    assert error(ask(AveragingTarget(defended(encoder), 4, 2), x), clean) < 0.02  # near-duplicates embed alike
    copies = near_duplicates(x[:50], 4, 2, seed=0)
    assert torch.equal(copies[0], x[:50]) and all((c.int() - x[:50].int()).abs().max() <= 2 for c in copies)
    assert len({bytes(c[i].numpy()) for c in copies for i in range(3)}) == 12  # every copy another query


def test_recovery_removes_most_of_the_noise_it_is_given(encoder, images):
    x = images["digits"][:400]
    clean = ask(defended(encoder), x)
    noisy = ask(defended(encoder, "noise:sigma=1.0,secret=3"), x)
    recovered = RecoveringTarget(defended(encoder, "noise:sigma=1.0,secret=3")).embed(x)
    assert error(recovered, clean) < 0.6 * error(noisy, clean)


def test_paced_accounts_stay_under_the_coverage_threshold_that_stops_one_account(encoder, images):
    detection = "detection:coverage_threshold=8,prada_threshold=null,policy=refuse,bits=6,projections=4"
    x = images["crops"][:600]
    accounts = SimulatedAccounts()
    one = defended(encoder, detection, accounts=accounts)
    with pytest.raises(AccountRefused):
        ask(one, x)
    bought = accounts.account("attacker").images
    assert bought < len(x)  # refused before the attacker had what it came for
    limit = max(10, (bought - REQUEST) // 2)
    spread = SimulatedAccounts()
    paced = PacedAccounts(lambda i: defended(encoder, detection, account=f"a{i}", accounts=spread), limit)
    answers = ask(paced, x)
    assert len(answers) == len(x) and len(paced.accounts) >= len(x) // limit
    assert all(not spread.figures(name)["detection"]["flagged"] for name in spread.accounts)
    assert all(account.queries <= limit for account in paced.accounts)


def test_sybils_and_paced_accounts_go_on_through_the_accounts_the_provider_has_not_refused(encoder, images, tmp_path):
    """An attacker refused on one account keeps what it was answered (the query cache) and buys on through its
    other accounts: sybils until every one is refused, a paced attacker by opening the next account."""
    detection = "detection:coverage_threshold=8,prada_threshold=null,policy=refuse,bits=6,projections=4"
    x = images["crops"][:600]

    def bought(target, name: str) -> torch.Tensor:
        cached = CachedTarget(target, QueryCache(tmp_path / f"{name}.sqlite", name), batch_size=REQUEST, progress=False)
        return answered(cached.embed(x))

    alone = bought(defended(encoder, detection), "alone")
    assert 0 < alone.sum() < len(x)
    spread = SimulatedAccounts()
    sybils = SybilTarget([defended(encoder, detection, account=f"s{i}", accounts=spread) for i in range(3)])
    kept = bought(sybils, "sybils")
    assert sorted(sybils.refused) == [0, 1, 2]  # every account refused in the end, each after its own share
    assert kept.sum() == sum(spread.account(f"s{i}").images for i in range(3)) > alone.sum()
    paced_accounts = SimulatedAccounts()
    paced = PacedAccounts(lambda i: defended(encoder, detection, account=f"p{i}", accounts=paced_accounts), len(x))
    assert bought(paced, "paced").all() and len(paced.accounts) >= 2 and 0 in paced.refused


def test_averaging_and_recovery_work_on_the_answers_a_refused_attacker_has(encoder, images):
    class RefusedAfter:
        """The first `count` images answered, the rest NaN (a query cache after a refusal)."""

        def __init__(self, count: int) -> None:
            self.count, self.queries, self.target = count, 0, defended(encoder, "noise:sigma=1.0,secret=3")

        def embed(self, batch):
            features = self.target.embed(batch)
            features[self.count:] = float("nan")
            return features

    x = images["digits"][:100]
    averaged = AveragingTarget(RefusedAfter(250), repeats=4, jitter=2).embed(x)  # 2.5 answered copies per image
    assert answered(averaged).all()
    assert torch.allclose(averaged[:50], defended(encoder, "noise:sigma=1.0,secret=3").embed(
        torch.cat(near_duplicates(x, 4, 2, 0)))[:300].view(3, 100, -1)[:, :50].mean(dim=0), atol=1e-5)
    recovered = RecoveringTarget(RefusedAfter(60)).embed(x)
    assert answered(recovered).tolist() == [True] * 60 + [False] * 40


def test_cover_queries_hide_a_stream_of_near_duplicates_from_prada(encoder, images):
    """The averaging attacker's near-duplicates put a quarter of its distances near 0: PRADA flags it. Three natural
    cover images per attack image make the distances look normal again."""
    detection = "detection:prada_threshold=0.9,bits=6,projections=4"
    stream = torch.stack(near_duplicates(images["crops"][:100], 4, 2, seed=0), dim=1).flatten(0, 1)

    def flagged(mix: float) -> bool:
        accounts = SimulatedAccounts()
        target = defended(encoder, detection, accounts=accounts)
        ask(CoverTarget(target, images["crops"][1000:], mix) if mix else target, stream)
        return bool(accounts.figures("attacker")["detection"]["flagged"])

    assert flagged(0) and not flagged(3.0)
    target = defended(encoder)
    covered = CoverTarget(target, images["crops"][1000:], 3.0)
    assert torch.equal(ask(covered, stream[:100]), ask(defended(encoder), stream[:100]))  # the cover's answers dropped
    assert covered.extra_queries == 300 and extra_queries(covered) == 300


TINY_SETTINGS = {"align": ({"align_anchors": 16}, {"accounts": 3}),
                 "average": ({"repeats": 2}, {}),
                 "pace": ({"account_queries": 20}, {}),
                 "mix": ({"mix": 1.0}, {}),
                 "recover": ({"recover": "pca"}, {})}
DEFENSES = {"b4b": {"name": "b4b", "beta": 50.0, "bits": 6, "projections": 4, "pad": 2},
            "noise": {"name": "noise", "sigma": 0.5},
            "detection": {"name": "detection", "bits": 6, "projections": 4}}


@pytest.mark.parametrize("name", ADAPTIVE)
def test_every_adaptive_option_steals_in_a_whole_run_and_counts_every_query(name, tmp_path, one_thread):
    settings, target = TINY_SETTINGS[name]
    tree = tiny_tree(run_dir=str(tmp_path / name), target={"query_batch_size": 16, **target,
                                                           "defenses": [DEFENSES[ADAPTIVE[name]["against"]]]})
    tree["attack"] = {**tree["attack"], "adaptive": settings}
    config = config_from_dict(tree)
    results = run_all(config, progress=False)
    images = 48 // (2 if name == "average" else 1)
    expected = {"align": images + 3 * 16, "average": 48, "pace": images, "mix": images + images, "recover": images}
    assert results["queries"] == expected[name]
    assert config.attack.recipe()["adaptive"] == settings
    if name == "pace":
        assert [a["account"] for a in results["attacker_accounts"]] == ["attacker", "attacker-2", "attacker-3"]
        assert all(a["images"] <= 20 for a in results["attacker_accounts"])


def test_a_resumed_aligned_run_buys_no_anchor_twice(tmp_path, one_thread, monkeypatch):
    """The aligned sybils' answers to the anchors are kept beside the query cache: a run killed after the anchors
    and one request refits the same maps when it is resumed, and buys only the images it had not bought."""
    tree = tiny_tree(run_dir=str(tmp_path / "run"), target={"query_batch_size": 16, "accounts": 3,
                                                           "defenses": [DEFENSES["b4b"]]})
    tree["attack"] = {**tree["attack"], "adaptive": {"align_anchors": 16}}
    run = Run.open(config_from_dict(tree), progress=False)
    pretrain(run)
    respond, requests = LocalTarget._respond, []

    def dies_at_the_fifth_request(self, chunk):  # 3 accounts x 16 anchors, then one request of the attack's
        requests.append(len(chunk))
        if len(requests) == 5:
            raise KeyboardInterrupt
        return respond(self, chunk)

    monkeypatch.setattr(LocalTarget, "_respond", dies_at_the_fifth_request)
    with pytest.raises(KeyboardInterrupt):
        steal(run)
    monkeypatch.setattr(LocalTarget, "_respond", respond)
    sent = lambda: sum(account.images for account in SimulatedAccounts(simulated_accounts_path(run)).accounts.values())  # noqa: E731
    assert sent() == 3 * 16 + 16 and len(list(kept_anchors_dir(run).glob("account-*.sqlite"))) == 3
    meta = read_sidecar(steal(run))
    assert sent() == 3 * 16 + 48  # the two requests left, not one anchor again
    assert meta["queries"] == 48 + 3 * 16 and meta["queries_this_run"] == 32 and meta["queries_reused"] == 16 + 3 * 16
    run.stolen_path.unlink()
    sidecar_path(run.stolen_path).unlink()
    again = read_sidecar(steal(run))  # every answer cached: nothing asked below the cache, the anchors still counted
    assert sent() == 3 * 16 + 48 and again["queries"] == meta["queries"] and again["queries_this_run"] == 0


def test_adaptive_settings_stay_out_of_the_recipe_at_their_defaults(tiny_config):
    assert "adaptive" not in tiny_config.attack.recipe()


def test_adaptive_settings_that_cannot_work_are_refused():
    from encsteal.errors import ConfigError

    with pytest.raises(ConfigError, match="align_anchors.*target.accounts"):
        config_from_dict(tiny_tree(attack={"name": "stolenencoder", "arch": "small_cnn", "adaptive": {"align_anchors": 8}}))
    with pytest.raises(ConfigError, match="account_queries.*local"):
        config_from_dict(tiny_tree(target={"kind": "served", "checkpoint": "x"},
                                   attack={"name": "stolenencoder", "arch": "small_cnn", "adaptive": {"account_queries": 8}}))
