"""Every shipped preset runs end to end — pre-training, stealing and evaluation take two steps each — on tiny
data: the offline datasets for real, the torchvision ones from files fabricated in their real formats."""

import pytest

from encsteal.attacks import QUERIES_PER_IMAGE
from encsteal.config import load_config, presets_dir
from encsteal.experiments.pipeline import run_all
from fabricate import fabricate_all

PRESETS = sorted(str(p.relative_to(presets_dir()).with_suffix("")) for p in presets_dir().rglob("*.yaml"))
TINY = [
    "pretrain.epochs=1", "pretrain.batch_size=4", "pretrain.limit=8",
    "attack.epochs=1", "attack.batch_size=2",
    "evaluate.probe.epochs=1", "evaluate.random_inits=1", "evaluate.batch_size=16",
    "target.checkpoint=null", "target.query_batch_size=4",
]


def tiny(config):
    """Four surrogate images (bought with as many queries as the attack pays per image), the whole pool; every
    downstream task on a few images (the probe sees at most 16 of each split). A pre-training-only preset
    (fmnist-bench/target) names no surrogate set: natural crops stand in."""
    surrogate = config.surrogate.model_copy(update={"size": 4 * QUERIES_PER_IMAGE[config.attack.name](config.attack),
                                                    "pool": None})
    if surrogate.scenario == "different-distribution" and surrogate.dataset is None:
        surrogate = surrogate.model_copy(update={"dataset": "natural-crops", "split": "train"})
    tasks = [task.model_copy(update={"train_limit": 16, "test_limit": 16}) for task in config.evaluate.downstream]
    evaluate = config.evaluate.model_copy(update={"downstream": tasks})
    defenses = [d.model_copy(update={"shadow_images": 4}) if hasattr(d, "shadow_images") else d
                for d in config.target.defenses]
    return config.model_copy(update={"surrogate": surrogate, "evaluate": evaluate, "target": config.target.model_copy(update={"defenses": defenses})})


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_two_steps_of_every_stage(preset, tmp_path, monkeypatch, one_thread):
    root = fabricate_all(tmp_path / "data", monkeypatch)
    config = tiny(load_config(preset, [*TINY, f"data.root={root}", f"run_dir={tmp_path / 'run'}"]))
    results = run_all(config, progress=False)
    assert results["queries"] == 4 * QUERIES_PER_IMAGE[config.attack.name](config.attack)
    assert all(row["SA"] is not None for row in results["downstream"].values())
