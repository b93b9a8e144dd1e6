"""The pipeline end to end on tiny data: run directory contents, reuse, stages from checkpoints, CLI errors."""

import json
import subprocess
import sys

import pytest
import yaml

from encsteal.checkpoint import CheckpointError
from encsteal.config import config_from_dict, load_config
from encsteal.experiments.pipeline import Run, RunDirError, evaluate, pretrain, run_all, steal

from conftest import tiny_tree

RESULT_KEYS = {"TA", "SA", "SA_over_TA", "R", "gain_captured"}


def test_run_writes_everything_and_reruns_for_free(tiny_config):
    results = run_all(tiny_config, progress=False)
    run_dir = tiny_config.resolved_run_dir()
    for name in ("config.yaml", "metrics.jsonl", "results.json", "report.md", "summary.png", "target.safetensors",
                 "target.json", "stolen.safetensors", "stolen.json", "queries.sqlite"):
        assert (run_dir / name).exists(), name
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["downstream"]["digits"].keys() >= RESULT_KEYS
    assert isinstance(on_disk["queries"], int) and on_disk["queries"] == 48
    assert isinstance(on_disk["pretrain_seconds"], float) and isinstance(on_disk["steal_seconds"], float)
    row = results["downstream"]["digits"]
    assert 0 <= row["TA"] <= 1 and 0 <= row["SA"] <= 1 and 0 <= row["R"] <= 1
    assert "| digits |" in (run_dir / "report.md").read_text()
    assert load_config(run_dir / "config.yaml") == tiny_config
    # a second run reuses the target and the stolen encoder: nothing trained, nothing bought
    again = run_all(tiny_config, progress=False)
    assert again["queries"] == 48 and again["queries_this_run"] == 48  # recorded by the one steal that ran
    assert json.loads((run_dir / "stolen.json").read_text())["queries_this_run"] == 48


def test_changed_settings_in_the_same_run_dir_are_refused(tiny_config):
    run_all(tiny_config, progress=False)
    changed = tiny_config.model_copy(update={"attack": tiny_config.attack.model_copy(update={"lam": 1.0})})
    with pytest.raises(CheckpointError, match="other settings"):
        steal(Run.open(changed, progress=False))


def test_stages_from_checkpoints(tiny_config, tmp_path):
    target = pretrain(Run.open(tiny_config, progress=False))
    # a second run directory attacks the same target without pre-training again
    tree = tiny_tree(run_dir=str(tmp_path / "attack2"), target={"checkpoint": str(target), "query_batch_size": 16},
                     attack={"lam": 0.0})
    other = config_from_dict(tree)
    stolen = steal(Run.open(other, progress=False))
    assert stolen.parent == tmp_path / "attack2"
    assert not (tmp_path / "attack2" / "target.safetensors").exists()
    results = evaluate(Run.open(other, progress=False))
    assert results["attack"]["lam"] == 0.0 and results["queries"] == 48


@pytest.mark.parametrize("scenario, extra", [("subset", {}), ("same-distribution", {"split": "test"})])
def test_surrogate_scenarios(scenario, extra, tiny_config, tmp_path):
    tree = tiny_tree(run_dir=str(tmp_path / scenario), surrogate={"scenario": scenario, "dataset": None, "size": "25%", **extra})
    results = run_all(config_from_dict(tree), progress=False)
    assert results["surrogate"]["scenario"] == scenario
    assert results["surrogate"]["dataset"] == "digits"
    assert results["queries"] == 32  # 25 % of the 128 pre-training images
    # a surrogate drawn from the downstream test split never doubles as test images
    assert results["downstream"]["digits"]["queried_images_held_out"] == (32 if scenario == "same-distribution" else 0)


def test_steal_before_pretrain_is_a_clear_error(tiny_config):
    with pytest.raises(RunDirError, match="encsteal pretrain"):
        steal(Run.open(tiny_config, progress=False))


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "encsteal.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "demo", "attack.lamda=3"], "unknown config key 'attack.lamda'"),
        (["run", "no-such-preset"], "no config file 'no-such-preset'"),
        (["run", "demo", "pretrain.dataset=cifar10", "data.root=/nonexistent"], "cifar10"),
        (["run", "demo", "surrogate.size=99999999"], "surrogate.size"),
    ],
)
def test_cli_errors_are_one_clear_sentence(args, message, tmp_path):
    if "surrogate.size=99999999" in args:
        args = [*args, "pretrain.dataset=digits", "pretrain.limit=null", "pretrain.epochs=1", f"run_dir={tmp_path / 'r'}"]
    result = cli(*args, "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_cli_stage_commands(tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny_tree(run_dir=str(tmp_path / "run"))))
    for command in ("pretrain", "steal", "evaluate"):
        result = cli(command, str(preset), "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert "digits" in result.stdout and (tmp_path / "run" / "results.json").exists()
    shown = cli("config", str(preset), "attack.epochs=3")
    assert yaml.safe_load(shown.stdout)["attack"]["epochs"] == 3


def test_named_tasks_with_their_own_probe_share_features_and_average_random_inits(tmp_path):
    config = config_from_dict(tiny_tree(run_dir=str(tmp_path / "run"), evaluate={
        **tiny_tree()["evaluate"], "random_inits": 2,
        "downstream": [{"dataset": "digits", "train_limit": 64, "test_limit": 32},
                       {"dataset": "digits", "name": "digits-linear", "train_limit": 64, "test_limit": 32,
                        "probe": {"hidden": [], "epochs": 2, "lr": 1e-3}}]}))
    results = run_all(config, progress=False)
    assert set(results["downstream"]) == {"digits", "digits-linear"}
    assert results["downstream"]["digits-linear"]["probe"] == "linear"
    for row in results["downstream"].values():
        assert len(row["R_runs"]) == 2 and row["R"] == pytest.approx(sum(row["R_runs"]) / 2)
    with pytest.raises(Exception, match="distinct names"):
        config_from_dict(tiny_tree(evaluate={"downstream": [{"dataset": "digits"}, {"dataset": "digits"}]}))
