"""A sweep: planned from cases x grid, resumable, failures recorded, targets and query caches shared."""

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_tree
from encsteal.checkpoint import save_encoder
from encsteal.config import ConfigError, config_from_dict
from encsteal.experiments.sweep import ResultStore, pending, plan, read_spec, run_sweep, share
from encsteal.models import build_encoder


def write_sweep(tmp_path, **spec):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny_tree()))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(preset), "runs_dir": str(tmp_path / "runs"), **spec}, sort_keys=False))
    return path


def test_plan_crosses_cases_with_the_grid_and_checks_every_config(tmp_path):
    path = write_sweep(tmp_path, cases={"a": {}, "b": {"attack.lam": 0}}, grid={"surrogate.size": [16, 32]})
    runs = plan(read_spec(path), tmp_path / "runs")
    assert [r.id for r in runs] == ["a__size=16", "a__size=32", "b__size=16", "b__size=32"]
    assert runs[2].config.attack.lam == 0 and runs[3].config.surrogate.size == 32
    bad = write_sweep(tmp_path, grid={"attack.no_such_key": [1]})
    with pytest.raises(ConfigError, match="no_such_key"):
        plan(read_spec(bad), tmp_path / "runs")


@pytest.mark.parametrize("field, figures", [("paper", {"c": {"digits": {"SA": 70.0}}}),
                                            ("paper_hours", {"c": {"pretrain": 12.5, "steal": 0.12}})])
def test_published_figures_must_name_a_run_of_the_sweep(tmp_path, field, figures):
    path = write_sweep(tmp_path, cases={"a": {}}, **{field: figures})
    with pytest.raises(ConfigError, match=f"{field}: no run of the sweep is called c"):
        plan(read_spec(path), tmp_path / "runs")


def test_sweep_shares_target_and_queries_records_failures_and_resumes(tmp_path, one_thread):
    path = write_sweep(tmp_path, cases={"small": {"surrogate.size": 16}, "large": {"surrogate.size": 32},
                                        "needs-labels": {"attack.loss": "supcon"}})
    rows = {row["id"]: row for row in run_sweep(path, progress=False, echo=lambda *_: None)}
    assert rows["small"]["status"] == rows["large"]["status"] == "done"
    assert rows["needs-labels"]["status"] == "failed" and "labels" in rows["needs-labels"]["error"]
    runs = tmp_path / "runs"
    assert len(list((runs / "targets").glob("*/target.safetensors"))) == 1  # pre-trained once, shared
    assert len(list((runs / "caches").glob("*.sqlite"))) == 2  # the shared query cache and probe cache
    with sqlite3.connect(runs / "caches" / "probes.sqlite") as db:  # R's and the target's probes, once
        assert db.execute("SELECT COUNT(*) FROM probes").fetchone()[0] == 4  # target + 3 random inits, same data
    small, large = (json.loads(rows[k]["results"]) for k in ("small", "large"))
    assert small["queries"] == 16 and large["queries"] == 32  # each run's own cost...
    assert small["downstream"]["digits"]["R"] == large["downstream"]["digits"]["R"]
    stolen = json.loads((runs / "large" / "stolen.json").read_text())
    assert stolen["queries_this_run"] == 16 and stolen["queries_reused"] == 16  # ...the 16 shared ones bought once
    assert "| small | digits |" in (runs / "report.md").read_text()
    assert (runs / "results.csv").exists() and (runs / "accuracy.png").exists()  # cases only: bars per run
    # started again: the finished runs are skipped, the failed one is tried again
    said = []
    run_sweep(path, progress=False, echo=said.append)
    assert sum("skipped" in line for line in said) == 2


def test_a_done_run_whose_settings_changed_is_never_skipped_silently(tmp_path):
    path = write_sweep(tmp_path, cases={"a": {"attack.lam": 20}, "b": {}})
    runs = tmp_path / "runs"
    store = ResultStore(runs / "results.sqlite")
    for run in plan(read_spec(path), runs):  # both recorded as done with the file's settings
        store.record(run.id, "done", share(run.config, runs, True), {"queries": 1}, None, 1.0)
        (runs / run.id).mkdir()
    said = []
    assert pending(path, echo=said.append)[2] == [] and len(said) == 2
    path.write_text(path.read_text().replace("attack.lam: 20", "attack.lam: 5"))
    with pytest.raises(ConfigError, match=r"a \(attack\.lam\).*new names.*delete their directories"):
        pending(path, echo=said.append)
    (runs / "a").rmdir()  # its old outputs deleted: it runs again with the new settings, b is still skipped
    todo = pending(path, echo=said.append)[2]
    assert [run.id for run in todo] == ["a"] and todo[0].config.attack.lam == 5


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "sweeps").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_plans(path, tmp_path):
    from encsteal.experiments import verify_sweep

    if verify_sweep.is_verify_sweep(path):  # a `verify:` file: one victim against suspects its `before` sweeps make
        spec = verify_sweep.read_spec(path)
        assert spec.suspects and all((s.checkpoint is None) != (s.random is None) for s in spec.suspects.values())
        for before in spec.before:
            assert plan(read_spec(before), tmp_path)
        return
    runs = plan(read_spec(path), tmp_path)
    assert runs and len({run.id for run in runs}) == len(runs)


def test_sweep_on_submitit_local_jobs_pretrains_once_and_groups_runs_by_query_cache(tmp_path):
    from encsteal.experiments.dispatch import SubmititExecutor

    path = write_sweep(tmp_path, cases={"small": {"surrogate.size": 16}, "large": {"surrogate.size": 32},
                                        "rounded": {"surrogate.size": 16, "target.defenses": [{"name": "rounding", "decimals": 1}]},
                                        "needs-labels": {"attack.loss": "supcon"}})
    said = []
    executor = SubmititExecutor(tmp_path / "runs" / "jobs", cluster="local", timeout_min=20)
    rows = {row["id"]: row for row in run_sweep(path, progress=False, echo=said.append, executor=executor)}
    assert [rows[k]["status"] for k in ("small", "large", "rounded")] == ["done"] * 3
    assert rows["needs-labels"]["status"] == "failed" and "labels" in rows["needs-labels"]["error"]
    assert any("pre-training 1 shared target" in line for line in said)
    assert any("4 run(s) in 2 job(s)" in line for line in said)  # small, large, needs-labels share a cache
    large = json.loads((tmp_path / "runs" / "large" / "stolen.json").read_text())
    small = json.loads((tmp_path / "runs" / "small" / "stolen.json").read_text())
    assert small["queries_this_run"] + large["queries_this_run"] == 32  # the 16 shared images bought once
    assert len(list((tmp_path / "runs" / "targets").glob("*/target.safetensors"))) == 1


def test_sweep_command_names_an_unknown_executor(tmp_path):
    from typer.testing import CliRunner

    from encsteal.cli import app

    result = CliRunner().invoke(app, ["sweep", str(write_sweep(tmp_path)), "--executor", "ray-by-hand"])
    assert result.exit_code == 2 and "use inline or submitit" in " ".join(result.output.split())


def test_runs_whose_poisoning_shadows_differ_never_share_a_query_cache(tmp_path):
    def cache(defenses, lr=1e-3):
        config = config_from_dict(tiny_tree(target={"defenses": defenses}, attack={"lr": lr}))
        return share(config, tmp_path, True).target.query_cache

    poisoning = {"name": "poisoning", "epsilon": 0.5}
    assert cache([]) == cache([], lr=3e-3)  # the attacker's settings are no part of an undefended target
    # ...but the run-trained shadow encoder is trained with them
    assert cache([poisoning]) != cache([poisoning], lr=3e-3)
    assert cache([poisoning]) == cache([poisoning])
    given = {**poisoning, "shadow": str(tmp_path / "shadow.safetensors")}

    def write_shadow(seed):
        torch.manual_seed(seed)
        save_encoder(build_encoder("small_cnn", "imagenet"), tmp_path / "shadow.safetensors",
                     {"role": "shadow", "image_size": 32})

    write_shadow(0)
    first = cache([given])
    write_shadow(1)
    assert cache([given]) != first  # a given shadow by its weights: two files at one path are two defenses


def test_seeds_repeat_every_run_of_cases_and_grid_once_per_seed(tmp_path):
    path = write_sweep(tmp_path, cases={"a": {}, "b": {"attack.lam": 0}}, grid={"surrogate.size": [16, 32]},
                       seeds=[0, 7])
    runs = plan(read_spec(path), tmp_path / "runs")
    assert [r.id for r in runs][:4] == ["a__size=16__seed=0", "a__size=16__seed=7", "a__size=32__seed=0",
                                        "a__size=32__seed=7"]
    assert len(runs) == 8 and [r.config.seed for r in runs[:2]] == [0, 7]
    assert runs[5].config.attack.lam == 0 and runs[5].config.run_dir == tmp_path / "runs" / "b__size=16__seed=7"
    twice = write_sweep(tmp_path, grid={"seed": [0, 1]}, seeds=[0, 1])
    with pytest.raises(ConfigError, match="give the seeds once"):
        plan(read_spec(twice), tmp_path / "runs")
    repeated = write_sweep(tmp_path, seeds=[1, 1])
    with pytest.raises(ConfigError, match="names a seed twice"):
        plan(read_spec(repeated), tmp_path / "runs")
