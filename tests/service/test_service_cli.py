"""`encsteal serve` and `encsteal accounts` as a provider uses them."""

import subprocess
import sys
import time

import httpx
import pytest
import torch

from encsteal.service.client import HttpTarget
from encsteal.service.ledger import Ledger
from encsteal.service.server import free_port


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "encsteal.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_accounts_commands(tmp_path):
    created = cli("accounts", "create", "carol", "--db", "p.sqlite", "--quota", "10", "--price", "0.001", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("es_") and key not in (tmp_path / "p.sqlite").read_bytes().decode("latin-1")
    again = cli("accounts", "create", "carol", "--db", "p.sqlite", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = cli("accounts", "list", "--db", "p.sqlite", cwd=tmp_path)
    assert "carol" in listed.stdout and "active" in listed.stdout
    assert cli("accounts", "disable", "carol", "--db", "p.sqlite", cwd=tmp_path).returncode == 0
    assert "disabled" in cli("accounts", "usage", "carol", "--db", "p.sqlite", cwd=tmp_path).stdout
    missing = cli("accounts", "usage", "nobody", "--db", "p.sqlite", cwd=tmp_path)
    assert missing.returncode == 2 and "no account named 'nobody'" in missing.stderr
    finer = cli("accounts", "create", "dan", "--db", "p.sqlite", "--price", "0.0000001", cwd=tmp_path)
    assert finer.returncode == 2 and "finer than a millionth" in finer.stderr


def test_accounts_show_exact_money_and_prune_replays(tmp_path):
    ledger = Ledger(tmp_path / "p.sqlite")
    buyer = ledger.authenticate(ledger.create_account("erin", price="0.001"))
    for index in range(992):
        ledger.bill(buyer, 1, "d", "m", f"key-{index}" if index < 3 else None, bytes(2**20) if index < 3 else None)
    usage = cli("accounts", "usage", "erin", "--db", "p.sqlite", cwd=tmp_path)
    assert "0.992 " in usage.stdout and "0.99200" not in usage.stdout and "0.001 " in usage.stdout, usage.stdout
    pruned = cli("accounts", "prune", "--db", "p.sqlite", "--replay-max-mb", "1.5", cwd=tmp_path)
    assert pruned.returncode == 0 and "dropped 2 stored replays (2.0 MB); 1.0 MB of replays kept" in pruned.stdout
    assert cli("accounts", "prune", "--db", "p.sqlite", "--replay-ttl", "0s", cwd=tmp_path).returncode == 2
    aged = cli("accounts", "prune", "--db", "p.sqlite", "--replay-ttl", "1s", cwd=tmp_path)
    assert "dropped 1 stored replays" in aged.stdout and ledger.replay_bytes() == 0


@pytest.mark.parametrize("args,message", [
    (["serve", "missing.safetensors"], "no checkpoint"),
    (["serve", "CHECKPOINT", "--defense", "top-k:k=0"], "--defense"),
    (["serve", "CHECKPOINT", "--defense", "blur:radius=2"], "unknown defense 'blur'"),
    (["serve", "CHECKPOINT", "--replay-ttl", "soon"], "'soon' is not a duration"),
    (["serve", "CHECKPOINT", "--db", "postgresql://u:s3cret@127.0.0.1:9/x"], "postgresql://u:***@127.0.0.1:9/x"),
])
def test_serve_refuses_bad_settings_with_one_sentence(args, message, checkpoint, tmp_path):
    db = [] if "--db" in args else ["--db", "p.sqlite"]
    result = cli(*[str(checkpoint) if a == "CHECKPOINT" else a for a in args], *db, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stderr  # announced only once the checkpoint and the database are loaded


def test_serve_with_two_workers_answers_and_bills(checkpoint, tmp_path):
    key = cli("accounts", "create", "dave", "--db", "p.sqlite", cwd=tmp_path).stdout.strip()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "encsteal.cli", "serve", str(checkpoint), "--db", "p.sqlite",
                               "--port", str(port), "--workers", "2", "--threads", "1", "--defense", "rounding:decimals=2"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # two workers load torch at once; slow on a busy machine
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never came up"
            time.sleep(0.2)
        client = HttpTarget(f"http://127.0.0.1:{port}", key, batch_size=8)
        features = client.embed(torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8))
        assert features.shape == (20, 256)
        torch.testing.assert_close(features, features.round(decimals=2))
        assert client.usage()["used"] == 20
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "dave" in cli("accounts", "usage", "dave", "--db", "p.sqlite", cwd=tmp_path).stdout
