"""Account-aware defenses in a whole run on tiny data: the attacker's accounts (one, or sybils), the customers'
side, the coverage center computed from the pre-training images, and query caches kept per query stream."""

import json

import numpy as np
import pytest

from encsteal.config import config_from_dict
from encsteal.experiments.pipeline import Run, defense_configs, pretrain, run_all
from encsteal.experiments.sweep import share

from conftest import tiny_tree

CUSTOMERS = [{"name": "digits-small", "dataset": "digits", "size": 40, "folds": 2},
             {"name": "digits-0-4", "dataset": "digits", "classes": [0, 1, 2, 3, 4], "size": 30, "folds": 2}]
DEFENSES = [{"name": "b4b", "beta": 2.0, "bits": 6, "projections": 4, "pad": 3, "center": "pretraining"},
            {"name": "pow", "base": 20, "bits": 6, "projections": 4},
            {"name": "detection", "coverage_threshold": 5.0, "bits": 6, "projections": 4}]


def config(tmp_path, accounts: int, kind: str = "local"):
    tree = tiny_tree(run_dir=str(tmp_path / f"run-{accounts}"),
                     target={"query_batch_size": 16, "accounts": accounts, "defenses": DEFENSES, "kind": kind})
    tree["evaluate"] = {**tree["evaluate"], "customers": CUSTOMERS}
    return config_from_dict(tree)


@pytest.mark.parametrize("accounts, kind", [(1, "local"), (3, "local"), (3, "served")])
def test_a_defended_run_reports_both_sides(tmp_path, accounts, kind, one_thread):
    results = run_all(config(tmp_path, accounts, kind), progress=False)
    attackers = results["attacker_accounts"]
    assert [a["account"] for a in attackers] == ["attacker", "attacker-2", "attacker-3"][:accounts]
    assert sum(a["images"] for a in attackers) == 48
    for attacker in attackers:
        assert attacker["pow_seconds"] > 0 and attacker["pow_hashes"] > 0
        assert set(attacker["figures"]) == {"b4b", "pow", "detection"}
        assert attacker["figures"]["b4b"]["queries"] == attacker["images"]
    names = [c["name"] for c in results["customers"]]
    assert names == ["digits-small", "digits-0-4"]
    for customer in results["customers"]:
        assert 0 <= customer["accuracy"] <= 1 and 0 <= customer["baseline"] <= 1
        assert customer["loss"] == pytest.approx(customer["baseline"] - customer["accuracy"])
        assert customer["pow_seconds"] > 0 and customer["figures"]["b4b"]["queries"] == customer["images"]
    assert results["customers"][0]["images"] == 40 and results["customers"][1]["images"] == 30
    # TA is the provider's own view, without the account-aware defenses; the copy has the padded dimensions
    stolen = json.loads((tmp_path / f"run-{accounts}" / "stolen.json").read_text())
    assert stolen["encoder"]["feature_dim"] == 256 + 3


def test_the_center_is_the_mean_pretraining_feature_kept_beside_the_target(tmp_path, one_thread):
    run = Run.open(config(tmp_path, 1), progress=False)
    pretrain(run)
    resolved = defense_configs(run)
    center = resolved[0].center
    assert center.parent == run.target_path.parent and center.suffix == ".npy"
    assert np.load(center).shape == (256,)
    assert defense_configs(run)[0].center == center  # computed once
    assert resolved[1].center is None


def test_sweeps_share_query_caches_only_between_runs_of_one_query_stream(tmp_path):
    one, three = config(tmp_path, 1), config(tmp_path, 3)
    cache = lambda c: share(c, tmp_path / "sweep", True).target.query_cache  # noqa: E731
    assert cache(one) != cache(three)
    other_loss = one.model_copy(update={"attack": one.attack.model_copy(update={"loss": "mse"})})
    assert cache(other_loss) == cache(one)  # another attack asking the same images shares the answers
    bigger = one.model_copy(update={"surrogate": one.surrogate.model_copy(update={"size": 32})})
    assert cache(bigger) != cache(one)  # not another stream: its account sees other queries
    undefended = config_from_dict(tiny_tree(run_dir=str(tmp_path / "u")))
    smaller = undefended.model_copy(update={"surrogate": undefended.surrogate.model_copy(update={"size": 32})})
    assert cache(undefended) == cache(smaller)  # stateless defenses answer an image alike in every stream
