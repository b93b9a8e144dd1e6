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


def test_the_audit_keeps_the_deployments_secrets_out_of_its_matrix_file(tmp_path, checkpoint, monkeypatch):
    path = audit_matrix(checkpoint, ["b4b:beta=9,secret=718249", "noise:sigma=0.5,secret=581923 > pow:base=20",
                                     "b4b:beta=9,secret=4242"], tmp_path, public="digits:test", budgets=["1%"],
                        attacks=["stolenencoder"])
    text = path.read_text()
    assert all(secret not in text for secret in ("718249", "581923", "4242"))
    secrets = tmp_path / "audit-secrets.yaml"
    assert secrets.stat().st_mode & 0o777 == 0o600 and (tmp_path / "runs").stat().st_mode & 0o777 == 0o700
    assert yaml.safe_load(secrets.read_text()) == {"ENCSTEAL_AUDIT_SECRET_B4B_1": 718249,
                                                  "ENCSTEAL_AUDIT_SECRET_NOISE_POW_1": 581923,
                                                  "ENCSTEAL_AUDIT_SECRET_B4B_PRIME_1": 4242}

    def secrets_of(defense: str) -> list[int]:
        planned = {run.id: run.config for run in plan_matrix(path)[2]}
        return [d.secret for d in planned[f"stolenencoder@1%__{defense}__seed=0"].target.defenses if hasattr(d, "secret")]

    assert secrets_of("b4b") == [718249] and secrets_of("b4b'") == [4242] and secrets_of("noise+pow") == [581923, 0]
    monkeypatch.setenv("ENCSTEAL_AUDIT_SECRET_B4B_1", "17")  # the environment first
    assert secrets_of("b4b") == [17]
    monkeypatch.delenv("ENCSTEAL_AUDIT_SECRET_B4B_1")
    secrets.chmod(0o644)
    with pytest.raises(ConfigError, match="may be read by others than its owner: chmod 600"):
        plan_matrix(path)
    secrets.write_text("ENCSTEAL_AUDIT_SECRET_B4B_1: 1\n")
    secrets.chmod(0o600)
    with pytest.raises(ConfigError, match=r"secret \$ENCSTEAL_AUDIT_SECRET_NOISE_POW_1 is neither in the environment"):
        plan_matrix(path)
