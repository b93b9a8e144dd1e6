"""ServerProcess reads what the server logs as it comes: a server that logs much never blocks on a full
pipe, and a server that fails to start is reported with the end of its log."""

import socket

import httpx
import pytest

from encsteal.errors import EncstealError
from encsteal.service.server import ServerProcess, ServeSettings

GARBAGE_REQUESTS = 3000
"""Each makes the server log a warning line of ~40 bytes: ~120 kB, twice what a pipe buffers."""


def send_garbage(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        connection.recv(1024)  # the server's 400, then it closes


def test_a_server_that_logs_much_keeps_answering(tmp_path, checkpoint):
    settings = ServeSettings(checkpoint=checkpoint, db=str(tmp_path / "accounts.sqlite"), threads=1)
    with ServerProcess(settings) as server:
        for _ in range(GARBAGE_REQUESTS):
            send_garbage(server.port)
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        assert "Invalid HTTP request" in server.tail()
        assert len(server.log) <= ServerProcess.LOG_LINES


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path):
    settings = ServeSettings(checkpoint=tmp_path / "missing.safetensors", db=str(tmp_path / "accounts.sqlite"))
    with pytest.raises(EncstealError, match="did not start: .*no checkpoint"):
        ServerProcess(settings).start()
