"""Many concurrent clients past a quota, on 2 worker processes (SQLite) and on two server instances of 2
workers each sharing one PostgreSQL database: every image delivered is billed, and no more than the quota
ever is, in every round."""

import threading
from contextlib import ExitStack

import httpx
import numpy as np
import pytest

from conftest import new_database
from encsteal.service import codec
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings

CLIENTS = 12
QUOTA = 100
ROUNDS = 3


def race(urls: list[str], key: str, seed: int) -> tuple[int, list[int]]:
    """Clients send requests of 1 to 4 new images, spread over the servers, until the quota refuses them;
    returns (images delivered, status codes seen)."""
    delivered, statuses, lock = [0], [], threading.Lock()

    def client(index: int) -> None:
        generator = np.random.default_rng(seed * 1000 + index)
        with httpx.Client(headers={"Authorization": f"Bearer {key}", "Content-Type": codec.NPY,
                                   "Accept": codec.NPY}, timeout=120) as http:
            for request in range(100):
                batch = generator.integers(0, 256, (int(generator.integers(1, 5)), 3, 32, 32), dtype=np.uint8)
                response = http.post(f"{urls[(index + request) % len(urls)]}/v1/embeddings", content=codec.encode_npy(batch))
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        delivered[0] += len(codec.decode_npy(response.content))
                if response.status_code != 200:
                    return

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return delivered[0], statuses


@pytest.mark.parametrize("kind,instances", [("sqlite", 1), ("postgresql", 2)])
def test_delivered_equals_billed_within_the_quota(kind, instances, request, checkpoint):
    db = new_database(kind, request)
    ledger = Ledger(db)
    settings = ServeSettings(checkpoint=checkpoint, db=db, threads=1)
    with ExitStack() as servers:
        urls = [servers.enter_context(ServerProcess(settings, workers=2)).url for _ in range(instances)]
        for round_ in range(ROUNDS):
            name = f"racer-{round_}"
            key = ledger.create_account(name, quota=QUOTA, price="0.001")
            delivered, statuses = race(urls, key, round_)
            (usage,) = ledger.usage(name)
            assert set(statuses) == {200, 402}, statuses
            assert delivered == usage.used <= QUOTA
            assert usage.used > QUOTA - 4  # the clients did run into the quota
            assert usage.spent_micros == usage.used * 1000
            assert sum(entry.images for entry in ledger.entries(name)) == usage.used
