"""A verification sweep: suspects from patterns, random inits and a real served API, each obfuscation a row,
resumable, and a report that its committed CSV regenerates."""

from pathlib import Path

import pytest
import torch
import yaml

from encsteal.checkpoint import save_encoder
from encsteal.config import ConfigError
from encsteal.data import load_dataset
from encsteal.experiments.verify_sweep import (
    is_verify_sweep,
    markdown_report,
    plan,
    read_csv,
    read_spec,
    records,
    run_verify_sweep,
)
from encsteal.models import build_encoder
from encsteal.ownership.watermark import create_watermark, save_watermark

SMALL = {"public_images": 100, "dataset_inference": {"fit_images": 60, "test_images": 40},
         "watermark": {"images": 10, "random_references": 3}}


def encoder_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_encoder(build_encoder("small_cnn", "imagenet"), path, {"role": "stolen", "image_size": 32})


@pytest.fixture
def sweep(tmp_path):
    victim = encoder_file(tmp_path / "victim" / "target.safetensors", 0)
    digits = load_dataset("digits", "train", root=tmp_path, image_size=32).images
    save_watermark(create_watermark(digits, 20, 1, 256, 1.0, 32), tmp_path / "victim" / "target.watermark.safetensors", {})
    for name in ("a", "b"):
        encoder_file(tmp_path / "copies" / name / "stolen.safetensors", 1 if name == "a" else 2)
    spec = {"verify": {
        "victim": str(victim), "private": "digits:train", "public": "digits:test", "runs_dir": str(tmp_path / "out"),
        "settings": SMALL, "device": "cpu",
        "suspects": {
            "victim": {"checkpoint": str(victim), "expect": "stolen", "group": "victim"},
            "copy": {"checkpoint": str(tmp_path / "copies" / "*" / "stolen.safetensors"), "expect": "stolen",
                     "obfuscations": ["none", "shuffle", {"kind": "pad", "pad": 8}]},
            "served": {"checkpoint": str(tmp_path / "copies" / "a" / "stolen.safetensors"), "served": True,
                       "expect": "stolen"},
            "random": {"random": {"arch": "small_cnn", "stem": "imagenet", "seeds": [5]}, "expect": "independent"},
        },
        "paper": {"victim": {"p_value": 4.52e-17, "delta_mu": 10.73}, "copy+shuffle": {"p_value": 1.7e-6}},
    }}
    path = tmp_path / "ownership.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_plan_expands_patterns_seeds_and_obfuscations(sweep):
    assert is_verify_sweep(sweep)
    ids = [p.id for p in plan(read_spec(sweep))]
    assert ids == ["victim", "copy/a", "copy/a+shuffle", "copy/a+pad", "copy/b", "copy/b+shuffle", "copy/b+pad",
                   "served", "random/5"]


def test_a_suspect_needs_a_source(sweep, tmp_path):
    tree = yaml.safe_load(sweep.read_text())
    tree["verify"]["suspects"]["nothing"] = {"checkpoint": str(tmp_path / "none" / "*.safetensors"), "expect": "stolen"}
    sweep.write_text(yaml.safe_dump(tree, sort_keys=False))
    with pytest.raises(ConfigError, match="nothing matches"):
        plan(read_spec(sweep))


def test_a_sweep_verifies_every_suspect_once_and_reports(sweep, tmp_path, one_thread):
    messages = []
    rows = run_verify_sweep(sweep, progress=False, echo=messages.append)
    assert [row["status"] for row in rows] == ["done"] * 9, [row["error"] for row in rows]
    recs = {rec["suspect"]: rec for rec in records(rows)}
    assert recs["victim"]["wm_p"] is not None and recs["random/5"]["expect"] == "independent"
    assert recs["copy/a"]["di_p"] == pytest.approx(recs["copy/a+shuffle"]["di_p"])  # a permutation changes nothing
    served = recs["served"]
    assert served["served"] and served["ledger_queries"] == served["queries"] == served["queries_paid"] > 0
    assert served["di_p"] == pytest.approx(recs["copy/a"]["di_p"], rel=1e-4)  # over HTTP as here
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "| copy/b+pad | stolen | pad |" in report and "Beside the slides" in report and (out / "pvalues.png").exists()
    # the committed CSV alone regenerates the report's tables
    regenerated = markdown_report(read_csv(out / "results.csv"), "verification sweep ownership.yaml",
                                  read_spec(sweep).paper)
    assert regenerated == report
    messages.clear()
    run_verify_sweep(sweep, progress=False, echo=messages.append)  # nothing new: every row is reused
    assert sum("done before, skipped" in m for m in messages) == 9


def test_the_results_page_counts_goals_from_the_csv_files(tmp_path):
    from encsteal.experiments.ownership_report import write
    from encsteal.experiments.verify_sweep import COLUMNS, write_csv

    def rec(suspect, expect, group, di_p, wm_p, obfuscation="none", served=False):
        return {**dict.fromkeys(COLUMNS), "suspect": suspect, "group": group, "obfuscation": obfuscation,
                "expect": expect, "di_p": di_p, "wm_p": wm_p, "di_delta_mu": 1.0, "wm_accuracy": 0.6,
                "verdict": "stolen" if min(p for p in (di_p, wm_p) if p is not None) < 0.025 else "independent",
                "queries": 2000, "ledger_queries": 2000 if served else None, "served": served, "seconds": 2.0,
                "hardware": "x86_64"}

    (tmp_path / "demo").mkdir()
    write_csv([rec("victim", "stolen", "victim", 0.5, 1e-9), rec("copy/a", "stolen", "stolen", 0.3, 1e-4),
               rec("copy/a+pad", "stolen", "stolen", 0.3, 0.02, "pad"), rec("served", "stolen", "served", 0.4, 1e-5,
                                                                              served=True),
               rec("random/1", "independent", "random-init", 0.04, 0.5)], tmp_path / "demo" / "results.csv")
    (tmp_path / "watermark-cost").mkdir()
    (tmp_path / "watermark-cost" / "results.csv").write_text(
        "run,task,TA,case\nplain-s0,fmnist,0.87,plain-s0\nwm-s0,fmnist,0.866,wm-s0\n")
    page = write(tmp_path).read_text()
    assert "| demo | 2 of 3 | 0 of 3 | 2 of 3 | 1 of 1 / 0 of 1 / 0 of 1 | 2,000 queries (2,000 in the ledger), stolen |" in page
    assert "| fmnist | 87.00 | 86.60 | +0.40 | +0.40 |" in page
    assert "| stolen+pad | 3.3e-06 | 4.84 | 3.0e-01 | 1.00 | 2.0e-02 |" in page
