"""Idempotent replays over real servers: free from the model that answered, billed from any other, and kept
only as long as the server's retention allows."""

import time

import httpx
import numpy as np
import torch

from conftest import tiny_checkpoint
from encsteal.checkpoint import load_encoder
from encsteal.defenses import parse_defense
from encsteal.service import codec
from encsteal.service.app import Model, create_app
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings
from encsteal.target import LocalTarget

IMAGES = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
BODY = codec.encode_npy(IMAGES.numpy())


def ask(server, key: str, idempotency_key: str = "request-1") -> tuple[int, np.ndarray]:
    """(images billed, features) of one request with an Idempotency-Key."""
    response = httpx.post(f"{server.url}/v1/embeddings", content=BODY, timeout=60, headers={
        "Authorization": f"Bearer {key}", "Content-Type": codec.NPY, "Accept": codec.NPY, "Idempotency-Key": idempotency_key})
    assert response.status_code == 200, response.text
    return int(response.headers["x-queries-billed"]), codec.decode_npy(response.content)


def local_features(checkpoint) -> np.ndarray:
    encoder, _ = load_encoder(checkpoint)
    return LocalTarget(encoder, image_size=32, device=torch.device("cpu")).embed(IMAGES).numpy()


def test_a_replay_is_free_from_the_same_model_only(tmp_path, checkpoint):
    db = str(tmp_path / "accounts.sqlite")
    key = Ledger(db).create_account("client", price="0.5")
    other_weights = tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    first = ServeSettings(checkpoint=checkpoint, db=db, threads=1)
    with ServerProcess(first) as server:
        billed, answer = ask(server, key)
        assert billed == 3
    # restarted on the same database with other weights: the same request is computed by them and billed
    with ServerProcess(first.model_copy(update={"checkpoint": other_weights})) as server:
        billed, other = ask(server, key)
        assert billed == 3
        np.testing.assert_allclose(other, local_features(other_weights), rtol=1e-4, atol=1e-5)
        assert not np.allclose(other, answer)
    # the first model again: its own answer, replayed free
    with ServerProcess(first) as server:
        billed, again = ask(server, key)
        assert billed == 0 and np.array_equal(again, answer)
    (usage,) = Ledger(db).usage("client")
    assert usage.used == 6 and usage.spent_micros == 3_000_000 and usage.requests == 2


def test_other_defenses_are_another_model(tmp_path, checkpoint):
    settings = ServeSettings(checkpoint=checkpoint, db=str(tmp_path / "accounts.sqlite"))
    defended = settings.model_copy(update={"defenses": [parse_defense("rounding:decimals=1")]})
    assert Model(settings).model_id == Model(settings).model_id != Model(defended).model_id


def test_stored_replays_are_pruned_to_size_when_a_worker_starts(tmp_path, checkpoint):
    db = str(tmp_path / "accounts.sqlite")
    ledger = Ledger(db)
    client = ledger.authenticate(ledger.create_account("client"))
    for index in range(10):
        ledger.bill(client, 1, f"d{index}", "some-model", f"key-{index}", bytes(1000))
    create_app(ServeSettings(checkpoint=checkpoint, db=db, replay_max_bytes=3500))
    assert ledger.replay_bytes() == 3000  # the three newest are kept
    assert [entry.idempotency_key for entry in ledger.entries("client")][-4:] == [None, "key-7", "key-8", "key-9"]


def test_replays_expire(tmp_path, checkpoint):
    db = str(tmp_path / "accounts.sqlite")
    ledger = Ledger(db)
    key = ledger.create_account("client", price=1)
    with ServerProcess(ServeSettings(checkpoint=checkpoint, db=db, threads=1, replay_ttl=4.0)) as server:
        assert httpx.get(f"{server.url}/v1/model").json()["replay_ttl"] == 4.0
        assert ask(server, key)[0] == 3
        assert ask(server, key)[0] == 0  # replayed while fresh
        time.sleep(4.5)
        assert ask(server, key)[0] == 3  # expired: billed again
    assert ledger.usage("client")[0].used == 6 and len(ledger.entries("client")) == 2
