"""The embedding API (FastAPI): the provider's encoder, its defenses, accounts, rate limits and billing.

    POST /v1/embeddings   images -> features (see encsteal.service.codec for the formats)
    GET  /v1/model        input size, feature dimension, formats and limits
    GET  /v1/usage        the calling account's queries, quota and spending
    GET  /healthz         liveness

Status codes: 401 missing or unknown API key, 403 disabled account, 429 over the rate limit (with
Retry-After), 402 over the quota, 413 too large, 415 unknown Content-Type, 400/422 malformed input. No
rejected request is billed; see encsteal.service.ledger for exactly when a request is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from encsteal.checkpoint import load_encoder
from encsteal.defenses import DefendedEncoder, DefenseConfig, build_defense, identity
from encsteal.service import codec
from encsteal.service.ledger import Account, Ledger, QuotaExceeded
from encsteal.training import channels_last

log = logging.getLogger("encsteal.service")

SETTINGS_ENV = "ENCSTEAL_SERVE_SETTINGS"


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: Path
    db: str
    defenses: list[DefenseConfig] = []
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)
    """Torch threads per worker process (default: torch's choice)."""
    max_batch: int = Field(512, ge=1)
    max_bytes: int = Field(64 << 20, ge=1024)
    description: str = ""
    """What the provider chooses to disclose about the model, shown by GET /v1/model."""


EMBEDDINGS_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            codec.JSON: {"schema": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "byte"},
                           "description": "base64-encoded PNG or JPEG files, any size (resized to the input size)"}}}},
            codec.NPY: {"schema": {"type": "string", "format": "binary",
                                   "description": "a NumPy .npy array N x C x H x W, C in {1, 3}, uint8 0-255 or float 0-1"}},
        },
    },
    "responses": {
        "200": {"description": "features; JSON by default, float32 .npy N x D with `Accept: application/x-npy` "
                               "(billing figures then in X-Queries-Billed, X-Quota-Remaining, X-Cost)",
                "content": {codec.JSON: {}, codec.NPY: {}}},
        "401": {"description": "missing or unknown API key"}, "402": {"description": "over the quota"},
        "403": {"description": "account disabled"}, "413": {"description": "payload or batch too large"},
        "415": {"description": "unsupported Content-Type"}, "422": {"description": "malformed images"},
        "429": {"description": "over the rate limit; see Retry-After"},
    },
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "repeat a request with the same key to receive its features again without a charge"}],
}


class Model:
    """The served encoder behind one lock: one forward pass at a time per worker keeps torch's threads busy
    on one batch instead of fighting over the cores."""

    def __init__(self, settings: ServeSettings) -> None:
        self.device = torch.device(settings.device)
        encoder, meta = load_encoder(settings.checkpoint, self.device)
        self.image_size: int = meta.get("image_size", 32)
        defenses = [build_defense(config, self.device, self.image_size) for config in settings.defenses]
        self.encoder = DefendedEncoder(encoder.to(memory_format=torch.channels_last), defenses).eval()
        self.feature_dim = encoder.feature_dim
        weights = hashlib.sha256(Path(settings.checkpoint).read_bytes()).hexdigest()
        # Identifies weights and defenses together (clients key their caches by it) without disclosing either.
        self.model_id = hashlib.sha256(f"{weights}|{identity(settings.defenses)}".encode()).hexdigest()[:16]
        self.lock = threading.Lock()

    def embed(self, images: torch.Tensor) -> np.ndarray:
        with self.lock, torch.inference_mode():
            batch = channels_last(images.to(self.device).float().div_(255))
            features = self.encoder(batch).float().cpu().numpy()
        if not np.isfinite(features).all():
            raise RuntimeError("the encoder produced non-finite features")
        return features


def create_app(settings: ServeSettings) -> FastAPI:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = Model(settings)
    ledger = Ledger(settings.db)
    app = FastAPI(title="encsteal embedding API", version="1",
                  description="Image embeddings from a pre-trained encoder, billed per image. " + settings.description)

    def account_of(request: Request) -> Account:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
        account = ledger.authenticate(key.strip())
        if account is None:
            raise HTTPException(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
        if account.disabled:
            raise HTTPException(403, f"account '{account.name}' is disabled; contact the provider")
        return account

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_bytes:
            raise HTTPException(413, f"payload of {int(declared)} bytes; at most {settings.max_bytes} are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_bytes:
                raise HTTPException(413, f"payload over {settings.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def serve_request(account: Account, body: bytes, content_type: str,
                      idempotency_key: str | None) -> tuple[np.ndarray, int, int | None]:
        """(features, queries billed, quota left); one read (authentication) and one write (billing) per request."""
        try:
            images = codec.decode_request(body, content_type, model.image_size, settings.max_batch)
        except codec.BadRequest as exc:
            raise HTTPException(exc.status, str(exc)) from None
        digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()
        if idempotency_key:
            replayed = replay(account, idempotency_key, digest)
            if replayed is not None:
                return replayed, 0, None if account.quota is None else max(0, account.quota - account.used)
        if account.quota is not None and account.used + len(images) > account.quota:
            # refused before computing anything (billing below re-checks, atomically, against concurrent requests)
            raise HTTPException(402, str(QuotaExceeded(account.used, account.quota, len(images))))
        features = model.embed(images)
        try:
            remaining = ledger.bill(account, len(images), digest, idempotency_key, features.tobytes())
        except QuotaExceeded as exc:
            raise HTTPException(402, str(exc)) from None
        except IntegrityError:  # the same idempotent request, billed by a concurrent worker a moment ago
            return replay(account, idempotency_key, digest), 0, None
        return features, len(images), remaining

    def replay(account: Account, key: str, digest: str) -> np.ndarray | None:
        entry = ledger.replay(account, key)
        if entry is None:
            return None
        if entry.request_digest != digest:
            raise HTTPException(422, "this Idempotency-Key was used for other images; use a new key per request")
        return np.frombuffer(entry.features, dtype=np.float32).reshape(entry.images, -1)

    @app.post("/v1/embeddings", openapi_extra=EMBEDDINGS_DOC)
    async def embeddings(request: Request) -> Response:
        account = await run_in_threadpool(account_of, request)
        wait = await run_in_threadpool(ledger.admit, account)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(429, f"rate limit of {account.rate:g} requests/s exceeded; retry in {seconds} s",
                                {"Retry-After": str(seconds)})
        body = await read_body(request)
        key = request.headers.get("idempotency-key")
        features, billed, remaining = await run_in_threadpool(
            serve_request, account, body, request.headers.get("content-type", ""), key)
        figures = {"queries_billed": billed, "quota_remaining": remaining, "cost": billed * account.price}
        if codec.NPY in request.headers.get("accept", ""):
            headers = {"X-Queries-Billed": str(billed), "X-Cost": repr(figures["cost"]),
                       "X-Quota-Remaining": "unlimited" if remaining is None else str(remaining)}
            return Response(codec.encode_npy(features), media_type=codec.NPY, headers=headers)
        body = {"embeddings": features.tolist(), "dim": int(features.shape[1]), **figures}
        return Response(json.dumps(body), media_type=codec.JSON)

    @app.get("/v1/model")
    def model_info() -> dict:
        return {"model_id": model.model_id, "input_size": model.image_size, "channels": 3,
                "feature_dim": model.feature_dim, "dtype": "float32", "formats": [codec.JSON, codec.NPY],
                "max_batch": settings.max_batch, "max_bytes": settings.max_bytes, "description": settings.description}

    @app.get("/v1/usage")
    def account_usage(request: Request) -> dict:
        account = account_of(request)
        usage = ledger.usage(account.name)[0]
        return {"account": usage.name, "used": usage.used, "quota": usage.quota, "remaining": usage.remaining,
                "spent": usage.spent, "price": usage.price, "requests": usage.requests}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def app_from_env() -> FastAPI:
    """The app of `encsteal serve` (uvicorn imports it in every worker process)."""
    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))
