"""The attack x defense matrix: every shipped matrix file plans, and a tiny matrix runs end to end (a sweep
underneath, the ownership verdict on every copy, both sides in every cell, resumable)."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from encsteal.errors import ConfigError
from encsteal.experiments.matrix import cells, plan_matrix, read_matrix, run_matrix, sweep_spec

from conftest import tiny_tree

MATRIX_FILES = sorted((Path(__file__).parents[1] / "matrix").glob("*.yaml"))


@pytest.mark.parametrize("path", MATRIX_FILES, ids=lambda p: p.stem)
def test_every_shipped_matrix_plans(path, tmp_path):
    spec, _, planned = plan_matrix(path)
    assert planned and len({run.id for run in planned}) == len(planned)
    assert {(a, d) for a, d, _ in cells(spec)} >= {(a, d) for a in spec.attacks for d in spec.only.get(a, spec.defenses)}


def test_a_matrix_ships():
    assert MATRIX_FILES


def tiny_matrix(tmp_path: Path, **changes) -> Path:
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(tiny_tree()))
    spec = {"base": str(base), "runs_dir": str(tmp_path / "runs"), "price": 0.001,
            "overrides": ["evaluate.customers=[{name: digits, dataset: digits, size: 40, folds: 2}]"],
            "attacks": {"plain": {}, "averaged": {"attack.adaptive.repeats": 2}},
            "defenses": {"none": {}, "noise": {"target.defenses": [{"name": "noise", "sigma": 0.5}]},
                         "detection": {"target.defenses": [{"name": "detection", "coverage_threshold": 1.0,
                                                            "bits": 6, "projections": 4}]}},
            "only": {"averaged": ["noise"]},
            "headline": {"attacks": ["plain"], "defenses": ["none"], "seeds": [0, 1]},
            "verify": {"public": "digits:test", "settings": {
                "public_images": 40, "dataset_inference": {"fit_images": 40, "test_images": 30, "components": 2}}},
            **changes}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_tiny_matrix_reports_both_sides_of_every_cell_and_resumes(tmp_path, one_thread):
    path = tiny_matrix(tmp_path)
    said = []
    report = run_matrix(path, progress=False, echo=said.append)
    assert report == tmp_path / "runs" / "matrix.md"
    with (tmp_path / "runs" / "matrix.csv").open() as handle:
        rows = {(r["attack"], r["defense"]): r for r in csv.DictReader(handle)}
    assert list(rows) == [("plain", "none"), ("plain", "noise"), ("plain", "detection"), ("averaged", "noise")]
    assert all(r["status"] == "done" for r in rows.values())
    assert rows[("plain", "none")]["seeds"] == "2" and rows[("plain", "none")]["G_ci95"] != ""
    assert rows[("plain", "noise")]["seeds"] == "1" and rows[("plain", "noise")]["G_ci95"] == ""
    for row in rows.values():
        assert 0 <= float(row["ownership_p"]) <= 1 and row["ownership"].endswith("stolen")
        assert float(row["money"]) == pytest.approx(float(row["queries"]) * 0.001)
        assert row["customer_loss"] != ""
    assert float(rows[("averaged", "noise")]["queries"]) == 48  # 24 images, each asked twice
    assert float(rows[("plain", "detection")]["flagged_share"]) == 1.0 and rows[("plain", "detection")]["flagged_at"]
    assert rows[("plain", "none")]["flagged_share"] == ""  # no account-aware defense: nobody to flag
    with (tmp_path / "runs" / "matrix-per-seed.csv").open() as handle:
        seeds = {(r["attack"], r["defense"], r["seed"]): r for r in csv.DictReader(handle)}
    noised, clean = seeds[("plain", "noise", "0")], seeds[("plain", "none", "0")]
    assert noised["TA"] == clean["TA"] and noised["TA_served"] != ""  # G against the undefended encoder
    assert float(noised["G"]) == pytest.approx((float(noised["SA"]) - float(noised["R"]))
                                               / (float(clean["TA"]) - float(noised["R"])))
    text = report.read_text()
    assert "| plain | detection |" in text and "100% of accounts, first at" in text
    assert all((tmp_path / "runs" / f"heatmap-{m}.png").stat().st_size > 0
               for m in ("G", "customer_loss", "ownership_p", "money"))
    assert len(list((tmp_path / "runs" / "targets").glob("*/target.safetensors"))) == 2  # one per seed

    said.clear()
    run_matrix(path, progress=False, echo=said.append)
    assert sum("done before, skipped" in line for line in said) == 5
    assert not any(line.startswith("verifying") for line in said)


def test_a_refused_attacker_trains_on_what_it_was_answered_and_its_cell_says_so(tmp_path, one_thread):
    """Detection with the policy `refuse` flags an account at its first request of 16 images and refuses the next:
    the attacker keeps those 16 answers and trains on them, sybils on the answers of each account; the legitimate
    user is refused too, and loses the images it could not embed. Under `throttle` the attacker waits instead."""
    refuse = {"target.defenses": [{"name": "detection", "coverage_threshold": 2.0, "prada_threshold": None,
                                   "policy": "refuse", "bits": 6, "projections": 4}]}
    throttle = {"target.defenses": [{**refuse["target.defenses"][0], "policy": "throttle", "throttle_rate": 20.0}]}
    path = tiny_matrix(tmp_path, attacks={"plain": {}, "sybils-2": {"target.accounts": 2}},
                       defenses={"none": {}, "refuse": refuse, "throttle": throttle},
                       only={"sybils-2": ["refuse"]}, headline=None, verify=None)
    report = run_matrix(path, progress=False, echo=lambda *_: None)
    with (tmp_path / "runs" / "matrix.csv").open() as handle:
        rows = {(r["attack"], r["defense"]): r for r in csv.DictReader(handle)}
    assert all(r["status"] == "done" for r in rows.values())
    alone, sybils = rows[("plain", "refuse")], rows[("sybils-2", "refuse")]
    assert float(alone["refused_at"]) == float(alone["queries"]) == 16 and alone["refused_seeds"] == "1"
    assert float(sybils["refused_at"]) == float(sybils["queries"]) == 32  # each account answered one request
    assert float(alone["flagged_at"]) == 16 and alone["G"] != "" and rows[("plain", "none")]["refused_at"] == ""
    throttled = rows[("plain", "throttle")]  # flagged at its first request, it waits 1/20 s before each next one
    assert float(throttled["queries"]) == 48 and throttled["refused_at"] == "" and float(throttled["wait_seconds"]) > 0
    assert float(alone["wait_seconds"]) == 0 and rows[("plain", "none")]["wait_seconds"] == ""
    results = json.loads((tmp_path / "runs" / "plain__refuse__seed=0" / "results.json").read_text())
    assert results["refused"]["account"] == "attacker" and results["refused"]["unanswered"] == 48 - 16
    customer = results["customers"][0]
    assert 0 < customer["refused_at"] < 40 and customer["accuracy"] <= customer["refused_at"] / 40
    assert "| plain | refuse | 1 |" in report.read_text() and "after 16 images (1/1 seeds)" in report.read_text()


def test_cells_that_set_one_key_twice_or_name_unknown_cells_are_refused(tmp_path):
    path = tiny_matrix(tmp_path, attacks={"a": {"target.defenses": []}}, only={}, headline=None)
    with pytest.raises(ConfigError, match="'a' and defense 'noise' both set target.defenses"):
        sweep_spec(read_matrix(path))
    path = tiny_matrix(tmp_path, headline={"attacks": ["nope"], "defenses": ["none"]})
    with pytest.raises(ConfigError, match="headline names nope"):
        plan_matrix(path)
    with pytest.raises(ConfigError, match="no cell is called plain__other"):
        plan_matrix(tiny_matrix(tmp_path), ["plain__other"])
    assert [run.id for run in plan_matrix(tiny_matrix(tmp_path), ["plain__noise"])[2]] == ["plain__noise__seed=0"]
