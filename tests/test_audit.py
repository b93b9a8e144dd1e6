"""`encsteal audit`: the strongest attacks at growing budgets against a tiny target, undefended and behind a
deployment, and the self-contained page a provider reads, checked in a real headless browser."""

import json

import pytest
import yaml

from encsteal.config import config_from_dict
from encsteal.errors import ConfigError
from encsteal.experiments.audit import audit_matrix, deployments, run_audit
from encsteal.experiments.matrix import plan_matrix
from encsteal.experiments.pipeline import Run, pretrain

from conftest import tiny_tree

SMALL_VERIFICATION = {"public_images": 40, "dataset_inference": {"fit_images": 40, "test_images": 30, "components": 2}}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A tiny target pre-trained on digits, audited behind Gaussian noise at two budgets."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("audit")
    tree = tiny_tree(run_dir=str(root / "target"))
    tree["evaluate"] = {**tree["evaluate"], "customers": [{"name": "digits", "dataset": "digits", "size": 40, "folds": 2}]}
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tree))
    checkpoint = pretrain(Run.open(config_from_dict(tree), progress=False))
    page = run_audit(checkpoint, ["noise:sigma=0.5"], root / "out", preset=str(preset), budgets=[16, 32],
                     attacks=["stolenencoder", "averaged-recovered"], price=0.01, public="digits:test",
                     verify_settings=SMALL_VERIFICATION, progress=False, echo=lambda *_: None)
    torch.set_num_threads(threads)
    return root, page


def test_the_audit_reports_cheapest_budgets_ownership_and_users_cost_per_deployment(audited):
    root, page = audited
    result = json.loads((root / "out" / "audit.json").read_text())
    assert list(result["deployments"]) == ["none", "noise"]
    points = {(p["deployment"], p["attack"], p["budget"]) for p in result["points"]}
    assert points == {("none", "stolenencoder", "16"), ("none", "stolenencoder", "32"),
                      ("noise", "stolenencoder", "16"), ("noise", "stolenencoder", "32"),
                      ("noise", "averaged-recovered", "16"), ("noise", "averaged-recovered", "32")}
    for point in result["points"]:
        assert point["money"] == pytest.approx(point["queries"] * 0.01) and 0 <= point["ownership_p"] <= 1
    for deployment in result["deployments"].values():
        assert set(deployment["cheapest"]) == {"0.5", "0.8"} and deployment["copies"] >= 2
        assert deployment["users_loss"] is not None
        for best in deployment["cheapest"].values():
            assert best is None or best["G"] >= 0.5
    assert result["deployments"]["noise"]["defenses"] == "noise:sigma=0.5,secret=***"
    assert page == root / "out" / "audit.html" and (root / "out" / "audit-matrix.yaml").exists()


def test_the_audit_page_renders_in_a_browser_and_loads_nothing_from_elsewhere(audited, browser):
    _, page = audited
    driver = browser.driver
    driver.get(page.resolve().as_uri())
    assert driver.title.startswith("encsteal audit")
    assert "How cheaply can this encoder be copied" in driver.find_element("tag name", "h1").text
    assert len(driver.find_elements("css selector", "#cheapest tr")) == 1 + 2
    assert len(driver.find_elements("css selector", "#copies tr")) == 1 + 6
    for image in ("g-queries", "g-money"):
        assert driver.execute_script(f"const i = document.getElementById('{image}'); return i.complete && i.naturalWidth")
    assert all(url.startswith("data:") for url in browser.resources())


def test_audit_deployments_and_attacks_read_as_serve_reads_defenses(tmp_path, checkpoint):
    assert [c.name for c in deployments(["pow:base=20 > b4b:beta=9"])["pow+b4b"]] == ["pow", "b4b"]
    with pytest.raises(ConfigError, match="unknown defense 'nope'"):
        deployments(["nope:k=1"])
    with pytest.raises(ConfigError, match="unknown audit attack"):
        audit_matrix(checkpoint, [], tmp_path, attacks=["x"], public="digits:test")
    path = audit_matrix(checkpoint, ["b4b:beta=9"], tmp_path, public="digits:test", budgets=["1%"])
    ids = [run.id for run in plan_matrix(path)[2]]
    assert "sybils-aligned@1%__b4b__seed=0" in ids and "sybils-aligned@1%__none__seed=0" not in ids
    assert "paced@1%__b4b__seed=0" in ids and "stolenencoder@1%__none__seed=0" in ids
