"""Start the embedding API with uvicorn: `encsteal serve CHECKPOINT --db PATH --port N [--defense ...]`."""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

from encsteal.errors import EncstealError
from encsteal.service.app import SETTINGS_ENV, ServeSettings, create_app


WORKER_HEALTHCHECK_SECONDS = 60
"""How long uvicorn waits for a worker process to answer its health check before it kills and restarts it.
uvicorn's 5 s is shorter than a worker takes to import torch on a busy machine: workers were killed while
starting, again and again, and the server never came up."""


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning", app: FastAPI | None = None) -> None:
    """Run the API until stopped. `app`: the app already built from `settings` (`encsteal serve` builds it
    first, so that it announces the server only once the checkpoint and the database have loaded)."""
    # Build the app here first: a bad checkpoint, defense or database fails now, with one clear message,
    # instead of in every worker process.
    app = create_app(settings) if app is None else app
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run("encsteal.service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS)


class ServerProcess:
    """The API in a child process on 127.0.0.1 (what a run with target.kind=served and the tests start).

        with ServerProcess(settings) as server:
            HttpTarget(server.url, key)

    The child's standard error is read by a thread as it comes (a pipe left unread would block the server
    once its buffer is full); the last LOG_LINES lines are kept in `log` for error messages.
    """

    LOG_LINES = 200

    def __init__(self, settings: ServeSettings, *, port: int | None = None, workers: int = 1,
                 startup_timeout: float = 120.0, log_level: str = "warning") -> None:
        self.settings = settings
        self.port = port or free_port()
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=self.LOG_LINES)
        self.reader: threading.Thread | None = None

    def start(self) -> ServerProcess:
        env = {**os.environ, SETTINGS_ENV: self.settings.model_dump_json()}
        self.log.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from encsteal.service.server import main; main()", "--port", str(self.port),
             "--workers", str(self.workers), "--log-level", self.log_level],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        self.reader = threading.Thread(target=self._drain, args=(self.process.stderr,), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.reader.join(timeout=5)
                raise EncstealError(f"the embedding API did not start: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise EncstealError(f"the embedding API did not answer on {self.url} within {self.startup_timeout:.0f} s: {self.tail()}")

    def tail(self, characters: int = 2000) -> str:
        """The end of what the server wrote to its standard error."""
        return "".join(self.log).strip()[-characters:] or "(it wrote nothing)"

    def _drain(self, stream) -> None:
        for line in stream:
            self.log.append(line)
        stream.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    """The child of ServerProcess: settings come through the environment; a problem is one sentence."""
    parser = argparse.ArgumentParser(description="encsteal embedding API (settings in $" + SETTINGS_ENV + ")")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    try:
        serve(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]), host=args.host, port=args.port,
              workers=args.workers, log_level=args.log_level)
    except EncstealError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
