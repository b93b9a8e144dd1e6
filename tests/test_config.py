from pathlib import Path

import pytest

from encsteal.config import Config, ConfigError, config_from_dict, dump_config, load_config, presets_dir


def test_every_preset_loads():
    presets = sorted(presets_dir().rglob("*.yaml"))
    assert presets, "no presets shipped"
    for path in presets:
        assert isinstance(load_config(path), Config)


def test_overrides_are_typed_and_nested():
    config = load_config("demo", ["attack.lam=0", "attack.augment=[grayscale]", "surrogate.size=250", "evaluate.downstream.0.train_limit=10"])
    assert config.attack.lam == 0.0
    assert config.attack.augment == ["grayscale"]
    assert config.surrogate.size == 250
    assert config.evaluate.downstream[0].train_limit == 10


def test_resolved_config_round_trips(tmp_path: Path):
    config = load_config("demo", ["seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    "override, key",
    [
        ("attack.lamda=3", "attack.lamda"),
        ("atack.lam=3", "atack"),
        ("evaluate.probe.hiden=[1]", "evaluate.probe.hiden"),
        ("evaluate.downstream.5.dataset=x", "evaluate.downstream.5"),
    ],
)
def test_unknown_key_names_itself(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("demo", [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("attack.epochs=many", "attack.epochs"),
        ("attack.lam=-1", "attack.lam"),
        ("surrogate.size=0", "surrogate.size"),
        ("surrogate.size=lots", "surrogate.size"),
        ("pretrain.stem=huge", "pretrain.stem"),
        ("pretrain.optimizer=adagrad", "pretrain.optimizer"),
        ("pretrain.momentum=1", "pretrain.momentum"),
        ("pretrain.color_strength=3", "pretrain.color_strength"),
    ],
)
def test_wrong_value_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("demo", [override])


def test_unknown_key_in_a_file_is_an_error(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("attack:\n  name: stolenencoder\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="attack.epochz"):
        load_config(path)


def test_malformed_override_and_missing_preset():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo", ["attack.epochs"])
    with pytest.raises(ConfigError, match="no config file 'nope'"):
        load_config("nope")


def test_surrogate_size_as_share_of_pretraining_set():
    config = config_from_dict({"surrogate": {"scenario": "subset", "size": "5%"}})
    assert config.surrogate.count(60000) == 3000
    assert config_from_dict({"surrogate": {"scenario": "subset", "size": 300}}).surrogate.count(60000) == 300


def test_view_size_needs_the_crop():
    with pytest.raises(ConfigError, match="pretrain.view_size.*random_resized_crop"):
        load_config("demo", ["pretrain.view_size=16", "pretrain.augment=[horizontal_flip]"])
    with pytest.raises(ConfigError, match="pretrain.view_size"):
        load_config("demo", ["pretrain.view_size=4"])


def test_small_views_need_the_crop_and_simclr():
    with pytest.raises(ConfigError, match="pretrain.small_views.*random_resized_crop"):
        load_config("demo", ["pretrain.small_views=2", "pretrain.augment=[horizontal_flip]"])
    with pytest.raises(ConfigError, match="pretrain.small_views.*simclr, not moco"):
        load_config("demo", ["pretrain.small_views=2", "pretrain.method=moco"])
    with pytest.raises(ConfigError, match="pretrain.small_view_size"):
        load_config("demo", ["pretrain.small_views=2", "pretrain.small_view_size=4"])


def test_warmup_fits_in_the_run():
    with pytest.raises(ConfigError, match=r"pretrain.warmup_epochs \(3\) is more than pretrain.epochs \(2\)"):
        load_config("demo", ["pretrain.epochs=2", "pretrain.warmup_epochs=3"])


def test_surrogate_scenario_source_rules():
    with pytest.raises(ConfigError, match="needs surrogate.dataset"):
        config_from_dict({"surrogate": {"scenario": "different-distribution", "dataset": None}})
    with pytest.raises(ConfigError, match="remove surrogate.dataset"):
        config_from_dict({"surrogate": {"scenario": "subset", "dataset": "digits"}})


def test_target_wire_rules():
    with pytest.raises(ConfigError, match="a local target has no wire"):
        config_from_dict({"target": {"kind": "local", "wire": "openai"}})
    with pytest.raises(ConfigError, match="proof-of-work defense needs the native wire"):
        config_from_dict({"target": {"kind": "served", "wire": "openai", "defenses": [{"name": "pow"}]}})
    config_from_dict({"target": {"kind": "served", "wire": "native", "defenses": [{"name": "pow"}]}})


@pytest.mark.parametrize(
    "override, key",
    [
        ("attack.name=foo", "attack.name"),
        ("attack.arch=resnet99", "attack.arch"),
        ("pretrain.augment=[solarize]", "pretrain.augment"),
        ("evaluate.downstream.0.dataset=cifar11", "evaluate.downstream.0.dataset"),
        ("attack.loss=l3", "attack.loss"),
        ("pretrain.method=byol", "pretrain.method"),
    ],
)
def test_unknown_registry_names_are_caught_when_reading_the_config(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}'.*known: "):
        load_config("demo", [override])


def test_the_config_names_exactly_the_registered_attacks_and_pretrainers():
    # the config names them instead of importing them, since both registries read the config
    from encsteal.attacks import ATTACKS
    from encsteal.config import ATTACK_NAMES, PRETRAIN_METHODS
    from encsteal.pretrain import PRETRAINERS

    assert tuple(ATTACKS) == ATTACK_NAMES
    assert tuple(PRETRAINERS) == PRETRAIN_METHODS


def test_the_config_names_exactly_the_registered_selections():
    from encsteal.attacks.selection import SELECTIONS
    from encsteal.config import EMBEDDING_SELECTIONS, SELECTION_NAMES

    assert tuple(SELECTIONS) == SELECTION_NAMES and set(EMBEDDING_SELECTIONS) <= set(SELECTIONS)


@pytest.mark.parametrize("device, message", [("gpu9", "is not a device"), ("cuda", "no CUDA device")])
def test_unusable_device_is_a_clear_error(device, message):
    import torch

    from encsteal.training import resolve_device

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=message):
        resolve_device(device)


def test_probe_reads_the_older_standardize_key():
    # resolved configs in run directories written before `features` existed
    assert config_from_dict({"evaluate": {"probe": {"standardize": False}}}).evaluate.probe.features == "raw"
    assert config_from_dict({"evaluate": {"probe": {"standardize": True}}}).evaluate.probe.features == "standardize"
    with pytest.raises(ConfigError, match="features alone"):
        config_from_dict({"evaluate": {"probe": {"standardize": True, "features": "l2"}}})
