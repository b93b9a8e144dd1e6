from pathlib import Path

import pytest
import torch

from encsteal.checkpoint import save_encoder
from encsteal.config import Config, config_from_dict
from encsteal.models import build_encoder
import browser as browsers
import pg_cluster
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings

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


# A real embedding API: a child process on 127.0.0.1 serving a tiny encoder, with an SQLite account database.


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_encoder(build_encoder("small_cnn", "imagenet"), path, {"role": "target", "image_size": 32})


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("target") / "target.safetensors")


# Account databases: the ledger and API tests run on SQLite files and on a real PostgreSQL server.

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (skipped, saying why, where it cannot run)."""
    reason = pg_cluster.why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = pg_cluster.Cluster().start()
    yield cluster
    cluster.stop()


def new_database(kind: str, request) -> str:
    """A new, empty account database: an SQLite file, or a database on the session's PostgreSQL server."""
    if kind == "sqlite":
        return str(request.getfixturevalue("tmp_path_factory").mktemp("db") / "accounts.sqlite")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(params=DATABASES)
def database(request) -> str:
    """A new, empty account database of each kind."""
    return new_database(request.param, request)


@pytest.fixture(scope="module", params=DATABASES)
def api(request, checkpoint):
    """(server, ledger): one server for a module's tests, on each kind of database; each test opens its own accounts."""
    db = new_database(request.param, request)
    ledger = Ledger(db)
    settings = ServeSettings(checkpoint=checkpoint, db=db, threads=1, max_batch=64, max_bytes=1 << 20,
                             max_image_pixels=256 * 256, max_request_pixels=64 * 64 * 64)
    with ServerProcess(settings) as server:
        yield server, ledger


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (tests/browser.py), skipped, saying why, where it cannot run."""
    reason = browsers.why_unavailable()
    if reason:
        pytest.skip(reason)
    started = browsers.Browser()
    yield started
    started.close()
