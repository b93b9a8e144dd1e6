"""Crashes on either side of the API lose no paid features, and no image is bought twice."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import yaml

from conftest import tiny_tree
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings

SURROGATE = 96


def cached(path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    except sqlite3.Error:
        return 0


def billed(ledger: Ledger) -> int:
    return ledger.usage("attacker")[0].used


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the steal ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.02)


def test_server_and_client_killed_mid_steal(tmp_path, checkpoint):
    db = tmp_path / "accounts.sqlite"
    ledger = Ledger(db)
    key = ledger.create_account("attacker", price=0.01)
    settings = ServeSettings(checkpoint=checkpoint, db=str(db), threads=1)
    server = ServerProcess(settings).start()
    run_dir = tmp_path / "run"
    tree = tiny_tree(run_dir=str(run_dir), surrogate={"size": SURROGATE}, attack={"epochs": 2},
                     target={"kind": "http", "url": server.url, "checkpoint": str(checkpoint), "query_batch_size": 4})
    preset = tmp_path / "steal.yaml"
    preset.write_text(yaml.safe_dump(tree))
    cache = run_dir / "queries.sqlite"
    env = {**os.environ, "ENCSTEAL_API_KEY": key, "OMP_NUM_THREADS": "1"}

    def steal() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "encsteal.cli", "steal", str(preset), "--quiet"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    try:
        # 1. the attacker's process dies mid-purchase
        client = steal()
        wait_for(lambda: cached(cache) >= 12, client)
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        assert 12 <= billed(ledger) <= cached(cache) + 4  # at most the request in flight is unpaid-for in the cache

        # 2. the provider's server dies mid-purchase and comes back on the same port
        client = steal()
        paid_before = cached(cache)
        wait_for(lambda: cached(cache) >= paid_before + 12, client)
        server.kill()
        time.sleep(1.0)
        server = ServerProcess(settings, port=server.port).start()
        out, err = client.communicate(timeout=600)
        assert client.returncode == 0, err
    finally:
        server.stop()

    # every image was bought exactly once, and every ledger entry reached the attacker's cache
    assert cached(cache) == SURROGATE
    assert billed(ledger) == SURROGATE
    assert sum(entry.images for entry in ledger.entries("attacker")) == SURROGATE
    assert len({entry.request_digest for entry in ledger.entries("attacker")}) == len(ledger.entries("attacker"))
