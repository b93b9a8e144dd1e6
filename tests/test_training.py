"""The process-wide settings a training run makes, and the epoch states a killed run resumes from."""

import subprocess
import sys
import textwrap

import pytest
import torch

from encsteal.attacks import ATTACKS
from encsteal.config import AttackConfig, ConfigError
from encsteal.models import build_encoder
from encsteal.target import LocalTarget
from encsteal.training import TrainContext, differing_keys


def test_kept_memory_spares_the_page_faults_of_each_step():
    # in a fresh process, so that this one keeps glibc's defaults
    script = textwrap.dedent("""
        import resource, torch
        from encsteal.augment import ColorJitter
        from encsteal.training import keep_freed_memory
        torch.manual_seed(0)
        images, jitter = torch.rand(256, 3, 32, 32), ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)

        def faults_per_call():
            jitter(images)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                jitter(images)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

        print(faults_per_call(), keep_freed_memory(), faults_per_call())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    default, kept, after = float(out[0]), out[1], float(out[2])
    if kept == "False":
        pytest.skip("malloc is not glibc's here: keep_freed_memory changes nothing")
    assert kept == "True"
    # a 256-image batch is 3 MiB (768 pages): by default each call faults in its temporaries afresh
    assert default > 500 and after < default / 10


class Killed(Exception):
    pass


def kill_after_first_epoch(record):
    """A metrics sink that stops the loop right after epoch 1 was saved, as a kill would."""
    if record["epoch"] == 1:
        raise Killed


@pytest.fixture(scope="module")
def victim():
    torch.manual_seed(0)
    return LocalTarget(build_encoder("small_cnn"), image_size=32, device=torch.device("cpu"), batch_size=16)


def steal_with_state(victim, state, config, log=lambda record: None, recipe=None):
    surrogate = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ctx = TrainContext(device=torch.device("cpu"), seed=0, state_path=state, log=log, progress=False,
                       recipe=recipe or {})
    return ATTACKS["stolenencoder"](victim, surrogate, config, ctx)


def test_a_state_of_other_settings_is_refused_with_the_keys_that_differ(victim, tmp_path, one_thread):
    state = tmp_path / "state" / "steal.pt"
    config = AttackConfig(arch="small_cnn", epochs=2, batch_size=8, augment=["horizontal_flip"])
    stage = {"target": {"checkpoint": "abc", "defenses": "none"}}
    with pytest.raises(Killed):
        steal_with_state(victim, state, config, kill_after_first_epoch, stage)
    saved = torch.load(state, weights_only=True)  # tensors, numbers, strings, lists and dicts only
    assert saved["recipe"]["attack"]["lr"] == 1e-3 and saved["recipe"]["target"] == stage["target"]

    changes = [({"lr": 3e-3}, stage, "attack.lr"), ({"arch": "resnet18", "stem": "imagenet"}, stage, "attack.arch, attack.stem"),
               ({"epochs": 3, "lam": 1.0}, stage, "attack.lam, attack.epochs"),
               ({}, {"target": {"checkpoint": "def", "defenses": "none"}}, "target.checkpoint")]
    for update, recipe, keys in changes:
        with pytest.raises(ConfigError, match=f"other settings \\(different: {keys}\\)"):
            steal_with_state(victim, state, config.model_copy(update=update), recipe=recipe)
    assert state.exists()  # refused, not overwritten

    steal_with_state(victim, state, config, recipe=stage)  # the same settings resume it
    assert not state.exists()


def test_a_state_without_its_recipe_is_refused(victim, tmp_path, one_thread):
    state = tmp_path / "steal.pt"
    config = AttackConfig(arch="small_cnn", epochs=2, batch_size=8, augment=["horizontal_flip"])
    with pytest.raises(Killed):
        steal_with_state(victim, state, config, kill_after_first_epoch)
    older = torch.load(state, weights_only=True)
    del older["recipe"]
    torch.save(older, state)
    with pytest.raises(ConfigError, match="without the settings"):
        steal_with_state(victim, state, config)


def test_differing_keys_names_changed_added_and_removed_keys():
    saved = {"attack": {"lr": 1, "views": [1, 2]}, "seed": 0, "old": 1}
    wanted = {"attack": {"lr": 2, "views": [1, 2]}, "seed": 0, "new": 1}
    assert differing_keys(saved, wanted) == ["attack.lr", "old", "new"]
    assert differing_keys(saved, saved) == []
