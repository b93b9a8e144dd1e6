"""`encsteal traffic`: customers and attacker streams against defended deployments, on tiny data."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from encsteal.experiments.traffic import best_tpr, read_traffic, roc, run_traffic


def test_roc_counts_attackers_as_positives():
    rows = [{"kind": "attacker", "score": 0.9}, {"kind": "attacker", "score": 0.4}, {"kind": "customer", "score": 0.5},
            {"kind": "customer", "score": 0.1}, {"kind": "customer", "score": None}]
    points = roc(rows, lambda row: row["score"])
    assert points[0][1:] == (0.0, 0.0)
    assert (0.9, 0.0, 0.5) in points and (0.5, 1 / 3, 0.5) in points and (0.4, 1 / 3, 1.0) in points
    assert best_tpr(points, max_fpr=0.05) == (0.5, 0.9)
    assert best_tpr(points, max_fpr=0.5) == (1.0, 0.4)


def spec(tmp_path, checkpoint) -> dict:
    return {
        "target": str(checkpoint), "batch_size": 16, "probe": {"hidden": [], "epochs": 2},
        "customers": [{"name": "digits-40", "dataset": "digits", "size": 40, "folds": 2},
                      {"name": "digits-0-1", "dataset": "digits", "classes": [0, 1], "size": 20, "folds": 2}],
        "attackers": [{"name": "crops", "surrogate": {"dataset": "natural-crops", "size": 48}},
                      {"name": "crops-sybils", "surrogate": {"dataset": "natural-crops", "size": 48}, "accounts": 2}],
        "deployments": {"b4b": [{"name": "b4b", "beta": 3, "bits": 6, "projections": 4}],
                        "pow": [{"name": "pow", "base": 20, "bits": 6, "projections": 4}],
                        "detection": [{"name": "detection", "min_queries": 10, "bits": 6, "projections": 4}]},
        "out": str(tmp_path / "out"),
    }


def test_traffic_scores_every_account_of_every_deployment(tmp_path, checkpoint, one_thread):
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, checkpoint)))
    report = run_traffic(path, echo=lambda *_: None)
    rows = list(csv.DictReader((tmp_path / "out" / "accounts.csv").open()))
    assert len(rows) == 3 * (2 + 1 + 2)
    by = {(r["deployment"], r["account"]): r for r in rows}
    assert by[("b4b", "customer:digits-40")]["images"] == "40" and by[("b4b", "crops-sybils:2")]["images"] == "16"  # the second of 3 requests
    assert float(by[("b4b", "crops:1")]["coverage"]) > 0 and float(by[("b4b", "crops:1")]["sigma"]) >= 0
    assert float(by[("pow", "crops:1")]["pow_seconds"]) > 0 and int(by[("pow", "crops:1")]["pow_hashes"]) > 0
    assert by[("b4b", "crops:1")]["pow_seconds"] in ("0.0", "0")
    assert by[("detection", "crops:1")]["flagged"] in ("0.0", "1.0") and by[("detection", "crops:1")]["prada_w"]
    for row in rows:
        if row["kind"] == "customer":
            assert float(row["loss"]) == pytest.approx(float(row["baseline"]) - float(row["accuracy"]))
    text = report.read_text()
    assert "## pow" in text and "Proof of work" in text and (tmp_path / "out" / "roc.png").exists()


def test_a_bad_traffic_file_is_one_sentence(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("target: x\ncustomers: []\nattackers: []\ndeployments: {}\nextra: 1\n")
    result = subprocess.run([sys.executable, "-m", "encsteal", "traffic", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "extra" in result.stderr and "Traceback" not in result.stderr


def test_defense_report_joins_the_stealing_sweep_and_the_traffic(tmp_path, checkpoint, one_thread):
    from encsteal.experiments.defense_scores import write_defense_report
    from encsteal.experiments.doc_tables import regenerate
    from encsteal.experiments.sweep import run_sweep

    from conftest import tiny_tree

    base = tiny_tree(target={"query_batch_size": 16})
    base["evaluate"] = {**base["evaluate"], "customers": [{"name": "fmnist-600", "dataset": "digits", "size": 30,
                                                           "folds": 2}]}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    b4b = [{"name": "b4b", "beta": 3, "bits": 6, "projections": 4}]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": str(tmp_path / "base.yaml"), "runs_dir": str(tmp_path / "runs"),
                                     "cases": {"none": {}, "b4b": {"target.defenses": b4b},
                                               "b4b-sybils": {"target.defenses": b4b, "target.accounts": 4}}},
                                    sort_keys=False))
    run_sweep(sweep, progress=False, echo=lambda *_: None)
    traffic = tmp_path / "traffic.yaml"
    traffic.write_text(yaml.safe_dump(spec(tmp_path, checkpoint)))
    run_traffic(traffic, echo=lambda *_: None)
    report = write_defense_report(sweep, traffic, tmp_path / "report")
    runs = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [r["run"] for r in runs] == ["none", "b4b", "b4b-sybils"]
    assert [r["accounts"] for r in runs] == ["1", "1", "4"] and runs[1]["attacker_coverage"] and "loss_fmnist-600" in runs[0]
    goals = {r["goal"]: r for r in csv.DictReader((tmp_path / "report" / "goals.csv").open())}
    assert "customers lose <= 1 point" in goals and goals["customers lose <= 1 point"]["met"] in ("yes", "no")
    assert any(goal.startswith("detection") for goal in goals) and any("proof-of-work" in goal for goal in goals)
    text = report.read_text()
    assert regenerate(text, report.parent) == text  # its tables are those of its CSV files
    assert "| b4b-sybils |" in text and "crops-sybils" in text


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "traffic").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_traffic_file_reads(path):
    spec = read_traffic(path)
    assert spec.deployments and spec.customers and spec.attackers
