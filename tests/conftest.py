from pathlib import Path

import pytest
import torch

from encsteal.config import Config, config_from_dict

TINY = {
    "name": "tiny",
    "seed": 0,
    "pretrain": {"method": "simclr", "dataset": "digits", "split": "train", "limit": 128, "arch": "small_cnn",
                 "epochs": 1, "batch_size": 32},
    "surrogate": {"scenario": "different-distribution", "dataset": "natural-crops", "size": 48},
    "attack": {"name": "stolenencoder", "arch": "small_cnn", "epochs": 1, "batch_size": 16},
    "target": {"query_batch_size": 16},
    "evaluate": {
        "downstream": [{"dataset": "digits", "train_limit": 64, "test_limit": 32}],
        "probe": {"epochs": 2, "lr": 1e-3, "hidden": [16]},
        "batch_size": 64,
    },
}


def tiny_tree(**sections) -> dict:
    """The tiny config as a dict, with sections updated (nested one level)."""
    tree = {key: (dict(value) if isinstance(value, dict) else value) for key, value in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            tree[key] = {**tree.get(key, {}), **value}
        else:
            tree[key] = value
    return tree


@pytest.fixture
def tiny_config(tmp_path: Path) -> Config:
    """A whole pipeline that runs in seconds: digits, tiny CNNs, one epoch each."""
    return config_from_dict(tiny_tree(run_dir=str(tmp_path / "run")))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one thread, and two threads on a busy 2-core machine stall for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
