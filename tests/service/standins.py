"""Local stand-ins of real embedding services, answering as each documents, so that the attacker's dialects are
tested without contacting any provider. They are the routes of a tiny FastAPI app started as a real process on
127.0.0.1 (`StandIn`; their paths do not overlap), embedding images with a checkpoint in the process (no
defense), counting what they saw (GET /stats) so that tests can tell what a client sent, and set anew by
POST /configure (quota, window of requests) between tests.

    openai    an OpenAI-compatible multimodal embedding server (vLLM's OpenAI API): POST /v1/embeddings with
              `input` (data URIs) or `messages` (one image); float or base64; usage in tokens (TOKENS_PER_IMAGE
              per image); a fixed window of requests announced in x-ratelimit-* headers, 429
              `rate_limit_exceeded` past it; past the quota, OpenAI's 429 `insufficient_quota`; GET /v1/models
    cohere    Cohere's POST /v2/embed for images: embeddings by type, `meta.billed_units.images`, errors as
              {"id", "message"}
    clarifai  Clarifai's PostModelOutputs: `Authorization: Key`, at most 128 inputs, `status.code` 10000;
              past the window 429 with 11005 (CONN_THROTTLED); past the quota 11006 (CONN_EXCEEDS_LIMITS)

    python standins.py CHECKPOINT PORT --key KEY
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

MODEL = "standin-embed-1"
TOKENS_PER_IMAGE = 4
"""What the openai stand-in bills per image (services count image tokens, not images)."""


class Counters:
    """What the stand-in saw, and its fixed window of requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(None, None, 1.0)

    def reset(self, quota: int | None, window_requests: int | None, window_seconds: float) -> None:
        with self.lock:
            self.quota, self.window_requests, self.window_seconds = quota, window_requests, window_seconds
            self.requests = self.refused_rate = self.refused_quota = self.images = 0
            self.window_start, self.in_window = time.monotonic(), 0

    def admit(self) -> tuple[bool, dict[str, str]]:
        """(admitted, rate-limit headers) for one request."""
        with self.lock:
            self.requests += 1
            if self.window_requests is None:
                return True, {}
            now = time.monotonic()
            if now - self.window_start >= self.window_seconds:
                self.window_start, self.in_window = now, 0
            reset = self.window_start + self.window_seconds - now
            admitted = self.in_window < self.window_requests
            if admitted:
                self.in_window += 1
            else:
                self.refused_rate += 1
            headers = {"x-ratelimit-limit-requests": str(self.window_requests),
                       "x-ratelimit-remaining-requests": str(self.window_requests - self.in_window),
                       "x-ratelimit-reset-requests": f"{max(1, int(reset * 1000) + 1)}ms"}
            return admitted, headers

    def bill(self, images: int) -> bool:
        with self.lock:
            if self.quota is not None and self.images + images > self.quota:
                self.refused_quota += 1
                return False
            self.images += images
            return True

    def as_dict(self) -> dict:
        return {"requests": self.requests, "refused_rate": self.refused_rate, "refused_quota": self.refused_quota,
                "images": self.images}


class Encoder:
    def __init__(self, checkpoint: Path) -> None:
        from encsteal.checkpoint import load_encoder
        from encsteal.target import LocalTarget

        torch.set_num_threads(1)
        encoder, meta = load_encoder(checkpoint)
        self.size = meta.get("image_size", 32)
        self.target = LocalTarget(encoder, image_size=self.size, device=torch.device("cpu"))

    def embed(self, files: list[bytes]) -> np.ndarray:
        images = []
        for data in files:
            with Image.open(io.BytesIO(data)) as image:
                rgb = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
        return self.target.embed(torch.stack(images)).numpy()


def from_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError("not a base64 image data URI")
    return base64.b64decode(payload)


def vector_text(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def openai_routes(app: FastAPI, encoder: Encoder, counters: Counters, key: str) -> None:
    def error(status: int, message: str, kind: str, code: str | None, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status,
                            headers=headers)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "standin"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        if request.headers.get("authorization") != f"Bearer {key}":
            return error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
        admitted, headers = counters.admit()
        if not admitted:
            return error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", headers)
        body = await request.json()
        if body.get("model") != MODEL:
            return error(404, f"The model `{body.get('model')}` does not exist", "invalid_request_error", "model_not_found")
        if "messages" in body:
            uris = [part["image_url"]["url"] for message in body["messages"] for part in message["content"]
                    if part.get("type") == "image_url"]
            if len(uris) != 1:
                return error(400, "one image per conversation", "invalid_request_error", None)
        else:
            uris = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not counters.bill(len(uris)):
            return error(429, "You exceeded your current quota, please check your plan and billing details.",
                         "insufficient_quota", "insufficient_quota")
        features = encoder.embed([from_data_uri(uri) for uri in uris])
        as_base64 = body.get("encoding_format", "float") == "base64"
        tokens = TOKENS_PER_IMAGE * len(uris)
        return JSONResponse({"object": "list", "model": MODEL, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                             "data": [{"object": "embedding", "index": index,
                                       "embedding": vector_text(vector) if as_base64 else vector.tolist()}
                                      for index, vector in enumerate(features)]}, headers=headers)


def cohere_routes(app: FastAPI, encoder: Encoder, counters: Counters, key: str) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"id": str(uuid.uuid4()), "message": message}, status)

    @app.post("/v2/embed")
    async def embed(request: Request):
        if request.headers.get("authorization") != f"Bearer {key}":
            return error(401, "invalid api token")
        admitted, _ = counters.admit()
        if not admitted:
            return error(429, "You are past the rate limit of this key")
        body = await request.json()
        if body.get("model") != MODEL or "input_type" not in body:
            return error(400, "model and input_type are required")
        if not counters.bill(len(body["images"])):
            return error(402, "Please add a payment method to continue")
        files = [from_data_uri(uri) for uri in body["images"]]
        features = encoder.embed(files)
        types = body.get("embedding_types", ["float"])
        embeddings = {}
        if "float" in types:
            embeddings["float"] = features.tolist()
        if "base64" in types:
            embeddings["base64"] = [vector_text(vector) for vector in features]
        return {"id": str(uuid.uuid4()), "embeddings": embeddings, "texts": [],
                "images": [{"width": encoder.size, "height": encoder.size, "format": "png", "bit_depth": 8}
                           for _ in files],
                "meta": {"api_version": {"version": "2"}, "billed_units": {"images": len(files)}},
                "response_type": "embeddings_by_type"}


def clarifai_routes(app: FastAPI, encoder: Encoder, counters: Counters, key: str) -> None:
    def status(http: int, code: int, description: str, details: str = "") -> JSONResponse:
        return JSONResponse({"status": {"code": code, "description": description, "details": details,
                                        "req_id": uuid.uuid4().hex}}, http)

    async def outputs(request: Request, model: str):
        if request.headers.get("authorization") != f"Key {key}":
            return status(401, 11009, "API key not found")
        admitted, _ = counters.admit()
        if not admitted:
            return status(429, 11005, "Making too many requests",
                          f"exceeded limit of {counters.window_requests} requests per second")
        inputs = (await request.json())["inputs"]
        if len(inputs) > 128:
            return status(400, 10020, "Failure", "at most 128 inputs per request")
        if not counters.bill(len(inputs)):
            return status(402, 11006, "Throttler and billing stuff; account limits exceeded")
        features = encoder.embed([base64.b64decode(item["data"]["image"]["base64"]) for item in inputs])
        return {"status": {"code": 10000, "description": "Ok", "req_id": uuid.uuid4().hex},
                "outputs": [{"id": uuid.uuid4().hex, "status": {"code": 10000, "description": "Ok"},
                             "model": {"id": model}, "input": {"id": uuid.uuid4().hex, "data": item["data"]},
                             "data": {"embeddings": [{"vector": vector.tolist(), "num_dimensions": len(vector)}]}}
                            for item, vector in zip(inputs, features)]}

    @app.post("/v2/users/{user}/apps/{app_id}/models/{model}/versions/{version}/outputs")
    async def versioned(request: Request, user: str, app_id: str, model: str, version: str):
        return await outputs(request, model)

    @app.post("/v2/users/{user}/apps/{app_id}/models/{model}/outputs")
    async def latest(request: Request, user: str, app_id: str, model: str):
        return await outputs(request, model)


ROUTES = (openai_routes, cohere_routes, clarifai_routes)


def build(checkpoint: Path, key: str) -> FastAPI:
    app = FastAPI()
    encoder = Encoder(checkpoint)
    counters = Counters()
    for routes in ROUTES:
        routes(app, encoder, counters, key)

    @app.get("/stats")
    def stats() -> dict:
        return counters.as_dict()

    @app.post("/configure")
    def configure(settings: dict) -> dict:
        counters.reset(settings.get("quota"), settings.get("window_requests"), settings.get("window_seconds", 1.0))
        return counters.as_dict()

    app.get("/ready")(lambda: {"ready": True})
    return app


class StandIn:
    """The stand-ins in a child process on 127.0.0.1: `with StandIn(checkpoint, key) as services: services.url`."""

    def __init__(self, checkpoint: Path, key: str) -> None:
        from encsteal.service.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, __file__, str(checkpoint), str(self.port), "--key", key]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> StandIn:
        self.process = subprocess.Popen(self.args, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the stand-ins did not start: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the stand-ins did not answer within 120 s")

    def configure(self, *, quota: int | None = None, window_requests: int | None = None,
                  window_seconds: float = 1.0) -> None:
        """A quota of images and a fixed window of requests (None: none), the counters set to zero."""
        httpx.post(f"{self.url}/configure", json={"quota": quota, "window_requests": window_requests,
                                                  "window_seconds": window_seconds}).raise_for_status()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats").json()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.checkpoint, args.key), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
