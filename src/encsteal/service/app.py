"""The embedding API (FastAPI): the provider's encoder, its defenses, accounts, rate limits and billing.

    POST /v1/embeddings   images -> features (see encsteal.service.codec for the formats)
    GET  /v1/model        input size, feature dimension, formats and limits
    GET  /v1/usage        the calling account's queries, quota and spending
    GET  /v1/models       the served model, as OpenAI lists models
    POST /v2/embed        images -> features in Cohere's v2 shape
    POST /v1/challenges   a proof-of-work puzzle for the account's next request (with the `pow` defense)
    GET  /healthz         liveness
    GET  /admin           the provider's console (accounts, usage, coverage, flags, plots), behind the admin token
    GET  /docs            the API's documentation page (Swagger UI), its assets served here: it works offline

POST /v1/embeddings also reads OpenAI's shapes (`input`, `messages`), and answers them in OpenAI's; those
routes' refusals are OpenAI-style {"error": {...}} bodies (encsteal.service.dialects). Every embedding
answer carries the account's x-ratelimit-* headers (encsteal.service.ratelimit).

Account-aware defenses (B4B, proof-of-work, detection; encsteal.service.defended) read and update each
account's state in the account database: 403 also refuses an account flagged under the policy `refuse`;
with proof-of-work a request without a solved challenge gets 428, a wrong or misbound one 422, a spent or
expired one 409 (ask for a new challenge).

Status codes: 401 missing or unknown API key, 403 disabled account, 429 over the rate limit (with
Retry-After and retry-after-ms), 402 over the quota, 413 too large (bytes, images or pixels), 415 unknown
Content-Type, 400/422 malformed input, 409 a concurrent request with the same Idempotency-Key, 404 a `model`
that is not the served one (the compatible shapes). No rejected request is billed; see
encsteal.service.ledger for exactly when a request is.

The order of the work bounds what a request can cost the provider before it is paid for: the API key and
the rate limit are checked before the body is read, the body is read up to `max_bytes`, its structure is
parsed up to the number of images (the JSON list, the .npy header), the quota is checked for that
number, and only then are image headers read, the pixel limits checked (`max_image_pixels`,
`max_request_pixels`) and pixels decoded. benchmarks/request_bounds.py measures the worst case.

Replays: a request with an `Idempotency-Key` header is answered again from the ledger, free, when the same
account repeats it (same key, same images) to the same model (`model_id`: weights and defenses). Sent to
a server that serves another model, it is no replay: it is computed and billed. Stored replays expire
after `replay_ttl` seconds and, oldest first, beyond `replay_max_bytes` in all; each worker prunes them
when it starts and then at most every PRUNE_INTERVAL seconds; after expiry a repeated request is computed
and billed again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request, Response, Security
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from encsteal.checkpoint import load_encoder
from encsteal.defenses import DefendedEncoder, DefenseConfig, build_defense, describe, identity
from encsteal.defenses.proof_of_work import PuzzleError
from encsteal.service import codec, console, ratelimit
from encsteal.service.account_states import StateConflict
from encsteal.service.defended import AccountDefenses, PowRequired, PowStale
from encsteal.service.dialects import openai
from encsteal.service.dialects.common import ServedModel
from encsteal.service.dialects.routes import Endpoints, parse_embeddings, register
from encsteal.service.ledger import MICROS, Account, Ledger, LedgerEntry, QuotaExceeded, format_money
from encsteal.training import channels_last

log = logging.getLogger("encsteal.service")

SETTINGS_ENV = "ENCSTEAL_SERVE_SETTINGS"
PRUNE_INTERVAL = 60.0
"""Seconds between two prunings of stored replays by one worker."""
KEY_PATTERN = re.compile(r"^[!-~]{1,128}$")
"""An Idempotency-Key: 1 to 128 visible ASCII characters."""


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: Path
    db: str
    defenses: list[DefenseConfig] = []
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)
    """Torch threads per worker process (default: torch's choice)."""
    max_batch: int = Field(512, ge=1)
    """Images of one request."""
    max_bytes: int = Field(64 << 20, ge=1024)
    """Bytes of one request body."""
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    """Pixels (width x height) of one image, read from its header before it is decoded."""
    max_request_pixels: int = Field(4096 * 4096, ge=1)
    """Pixels of all the images of one request: what bounds its decoding time and memory."""
    replay_ttl: float = Field(24 * 3600.0, gt=0)
    """Seconds a stored replay is kept; after that a repeated request is computed and billed again."""
    replay_max_bytes: int = Field(1 << 30, ge=0)
    """Bytes of stored replays kept in all; beyond, the oldest are dropped (and billed again if repeated)."""
    description: str = ""
    """What the provider chooses to disclose about the model, shown by GET /v1/model."""
    model_name: str | None = None
    """What clients send as `model` on the OpenAI and Cohere routes; None: the model_id."""
    admin_token_hash: str | None = None
    """SHA-256 (hex) of the admin token that opens /admin (`encsteal serve` prints the token or reads it from
    ENCSTEAL_ADMIN_TOKEN); None: no console."""

    def limits(self) -> codec.Limits:
        return codec.Limits(self.max_batch, self.max_image_pixels, self.max_request_pixels)


def _detail(description: str) -> dict:
    return {"description": description, "content": {codec.JSON: {"schema": {
        "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}}}}


REFUSALS = {"401": _detail("missing or unknown API key"), "403": _detail("account disabled")}

def embeddings_doc(settings: ServeSettings) -> dict:
    """The OpenAPI description of POST /v1/embeddings under these settings (what /docs shows and clients and
    fuzzers are generated from)."""
    images = {"type": "array", "minItems": 1, "maxItems": settings.max_batch,
              "items": {"type": "string", "format": "byte"},
              "description": f"base64-encoded PNG or JPEG files, any size (resized to the input size), at most "
                             f"{settings.max_image_pixels} pixels each and {settings.max_request_pixels} in all"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                codec.JSON: {"schema": {"type": "object", "required": ["images"], "properties": {"images": images}}},
                codec.NPY: {"schema": {"type": "string", "format": "binary",
                                       "description": "a NumPy .npy array N x C x H x W, C in {1, 3}, uint8 0-255 or "
                                                      "float 0-1"}},
            },
        },
        "responses": {
            "200": {"description": "features; JSON by default, float32 .npy N x D with `Accept: application/x-npy` "
                                   "(billing figures then in X-Queries-Billed, X-Quota-Remaining, X-Cost)",
                    "content": {codec.JSON: {"schema": {"type": "object", "properties": {
                        "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                        "dim": {"type": "integer"}, "queries_billed": {"type": "integer"},
                        "quota_remaining": {"type": ["integer", "null"]},
                        "cost": {"type": "number", "description": "exact decimal, at most 6 places"},
                        "cost_micros": {"type": "integer", "description": "the cost in millionths of the currency"}}}},
                        codec.NPY: {"schema": {"type": "string", "format": "binary"}}}},
            "400": _detail("malformed input (body, image, header)"), **REFUSALS, "402": _detail("over the quota"),
            "409": _detail("a request with this Idempotency-Key is being billed; repeat it"),
            "413": _detail("payload, batch or pixels over the limits of GET /v1/model"),
            "415": _detail("unsupported Content-Type"), "422": _detail("images the API cannot embed"),
            "429": _detail("over the rate limit; see Retry-After"),
        },
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
                        "description": "repeat a request with the same key to receive its features again without a "
                                       "charge (from the same model, while the stored answer has not expired)"}],
    }


class ChallengeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the request body to be sent")
    images: int = Field(ge=1, description="images in that request")


class Model:
    """The served encoder behind one lock: one forward pass at a time per worker keeps torch's threads busy
    on one batch instead of fighting over the cores."""

    def __init__(self, settings: ServeSettings) -> None:
        self.device = torch.device(settings.device)
        encoder, meta = load_encoder(settings.checkpoint, self.device)
        self.image_size: int = meta.get("image_size", 32)
        defenses = [build_defense(config, self.device, self.image_size) for config in settings.defenses]
        self.encoder = DefendedEncoder(encoder.to(memory_format=torch.channels_last), defenses).eval()
        self.feature_dim = self.encoder.feature_dim
        weights = hashlib.sha256(Path(settings.checkpoint).read_bytes()).hexdigest()
        # Identifies weights and defenses together (clients key their caches by it, the ledger its replays)
        # without disclosing either.
        self.model_id = hashlib.sha256(f"{weights}|{identity(settings.defenses)}".encode()).hexdigest()[:16]
        self.lock = threading.Lock()

    def embed(self, images: torch.Tensor) -> np.ndarray:
        with self.lock, torch.inference_mode():
            batch = channels_last(images.to(self.device).float().div_(255))
            features = self.encoder(batch).float().cpu().numpy()
        if not np.isfinite(features).all():
            raise RuntimeError("the encoder produced non-finite features")
        return features

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the batch as the defenses see it, the encoder's features before any defense), for account-aware
        defenses to answer an account from."""
        with self.lock, torch.inference_mode():
            batch = channels_last(images.to(self.device).float().div_(255))
            return batch, self.encoder.encoder(batch).float()


class Retention:
    """Drops stored replays past their age or beyond their total size: now, and then at most every
    PRUNE_INTERVAL seconds (each worker process on its own; pruning twice does no harm)."""

    def __init__(self, ledger: Ledger, settings: ServeSettings) -> None:
        self.ledger, self.max_age, self.max_bytes = ledger, settings.replay_ttl, settings.replay_max_bytes
        self.lock = threading.Lock()
        self.last = 0.0
        self.prune_if_due()

    def prune_if_due(self) -> None:
        if time.monotonic() - self.last < PRUNE_INTERVAL or not self.lock.acquire(blocking=False):
            return
        try:
            pruned = self.ledger.prune(max_age=self.max_age, max_bytes=self.max_bytes)
            if pruned.replays:
                log.info("dropped %d stored replays (%d bytes)", pruned.replays, pruned.bytes)
            self.last = time.monotonic()
        finally:
            self.lock.release()


def create_app(settings: ServeSettings) -> FastAPI:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = Model(settings)
    ledger = Ledger(settings.db)
    defended = AccountDefenses(model.encoder, ledger.engine)
    retention = Retention(ledger, settings)
    limits = settings.limits()
    bearer = HTTPBearer(auto_error=False, description="the account's API key: `Authorization: Bearer es_...`")
    # FastAPIOffline serves Swagger UI's script and style from its package instead of a CDN. No ReDoc page:
    # its bundle still fetches a logo from the internet.
    app = FastAPIOffline(redoc_url=None, title="encsteal embedding API", version="1",
                         description="Image embeddings from a pre-trained encoder, billed per image. " + settings.description)

    def account_of(credentials: HTTPAuthorizationCredentials | None) -> Account:
        if credentials is None or not credentials.credentials.strip():
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
        account = ledger.authenticate(credentials.credentials.strip())
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

    def serve_request(account: Account, body: bytes, content_type: str, idempotency_key: str | None, *,
                      parsed: codec.ParsedRequest | None = None,
                      pow_headers: tuple[str | None, str | None] = (None, None)) -> tuple[np.ndarray, int, int | None]:
        """(features, queries billed, quota left); cheap checks first, heavy work only for a request that
        may be answered. `parsed`: the body already read up to its number of images (the routes that read
        other shapes do so)."""
        request = parsed
        if request is None:
            try:
                request = codec.parse_request(body, content_type, limits)
            except codec.BadRequest as exc:
                raise HTTPException(exc.status, str(exc)) from None
        stored = ledger.replay(account, model.model_id, idempotency_key, max_age=settings.replay_ttl) \
            if idempotency_key else None
        if stored is None and account.quota is not None and account.used + request.count > account.quota:
            # refused before decoding anything (billing below re-checks, atomically, against concurrent requests)
            raise HTTPException(402, str(QuotaExceeded(account.used, account.quota, request.count)))
        try:
            images = request.decode(model.image_size)
        except codec.BadRequest as exc:
            raise HTTPException(exc.status, str(exc)) from None
        digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()
        if stored is not None:
            return replayed(stored, digest), 0, None if account.quota is None else max(0, account.quota - account.used)
        if not defended.active:
            features = model.embed(images)
            try:
                remaining = ledger.bill(account, len(images), digest, model.model_id, idempotency_key, features.tobytes())
            except QuotaExceeded as exc:
                raise HTTPException(402, str(exc)) from None
            except IntegrityError:
                return concurrent_replay(account, idempotency_key, digest)
            retention.prune_if_due()
            return features, len(images), remaining
        if defended.needs_pow:
            try:
                defended.verify(account.id, account.name, *pow_headers, hashlib.sha256(body).hexdigest(), len(images))
            except PowRequired as exc:
                raise HTTPException(428, str(exc)) from None
            except PowStale as exc:
                raise HTTPException(409, str(exc)) from None
            except PuzzleError as exc:
                raise HTTPException(422, str(exc)) from None
        batch, clean = model.encode(images)
        for _ in range(100):  # compare-and-set on the account's states: a concurrent request of it moved them
            answered = defended.answer(batch, clean, account.id, account.name)
            if not np.isfinite(answered.features).all():
                raise RuntimeError("the defenses produced non-finite features")
            try:
                remaining = ledger.bill(account, len(images), digest, model.model_id, idempotency_key,
                                        answered.features.tobytes(), within=answered.write)
            except StateConflict:
                continue
            except QuotaExceeded as exc:
                raise HTTPException(402, str(exc)) from None
            except IntegrityError:
                return concurrent_replay(account, idempotency_key, digest)
            retention.prune_if_due()
            return answered.features, len(images), remaining
        raise HTTPException(503, "too many concurrent requests of this account; repeat the request")

    def concurrent_replay(account: Account, idempotency_key: str | None, digest: str) -> tuple[np.ndarray, int, None]:
        """The same idempotent request, billed by a concurrent worker a moment ago: its stored answer."""
        stored = ledger.replay(account, model.model_id, idempotency_key)
        if stored is None:
            raise HTTPException(409, "a request with this Idempotency-Key was being billed at the same time; "
                                     "repeat it") from None
        return replayed(stored, digest), 0, None

    def replayed(entry: LedgerEntry, digest: str) -> np.ndarray:
        if entry.request_digest != digest:
            raise HTTPException(422, "this Idempotency-Key was used for other images; use a new key per request")
        return np.frombuffer(entry.features, dtype=np.float32).reshape(entry.images, -1)

    def idempotency_key_of(request: Request) -> str | None:
        key = request.headers.get("idempotency-key")
        if key is not None and not KEY_PATTERN.fullmatch(key):
            raise HTTPException(400, "the Idempotency-Key must be 1 to 128 visible ASCII characters (no spaces)")
        return key

    def admit(account: Account) -> dict[str, str]:
        """Take one request from the account's rate and refuse a flagged account (account-aware defenses under
        the policy `refuse`): the rate-limit headers of its answer."""
        headers = ratelimit.admit(ledger, account)
        refused = defended.refusal(account.id, account.name) if defended.active else None
        if refused:
            raise HTTPException(403, refused)
        return headers

    def pow_headers_of(request: Request) -> tuple[str | None, str | None]:
        return request.headers.get("x-pow-challenge"), request.headers.get("x-pow-nonce")

    served = ServedModel(settings.model_name or model.model_id, model.feature_dim,
                         int(Path(settings.checkpoint).stat().st_mtime))

    @app.post("/v1/embeddings", openapi_extra=openai.document(embeddings_doc(settings), limits, served))
    async def embeddings(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
        key = idempotency_key_of(request)
        account = await run_in_threadpool(account_of, credentials)
        rate_headers = await run_in_threadpool(admit, account)
        body = await read_body(request)
        content_type = request.headers.get("content-type", "")
        parsed = await run_in_threadpool(parse_embeddings, body, content_type, limits, served)
        features, billed, remaining = await run_in_threadpool(
            serve_request, account, body, content_type, key, parsed=parsed, pow_headers=pow_headers_of(request))
        cost = billed * account.price_micros
        if isinstance(parsed, openai.OpenAIRequest):
            return openai.answer(parsed, features, served, billed, remaining, cost, rate_headers)
        if codec.NPY in request.headers.get("accept", ""):
            headers = {"X-Queries-Billed": str(billed), "X-Cost": format_money(cost),
                       "X-Quota-Remaining": "unlimited" if remaining is None else str(remaining), **rate_headers}
            return Response(codec.encode_npy(features), media_type=codec.NPY, headers=headers)
        body = {"embeddings": features.tolist(), "dim": int(features.shape[1]), "queries_billed": billed,
                "quota_remaining": remaining, "cost": cost / MICROS, "cost_micros": cost}
        return Response(json.dumps(body), media_type=codec.JSON, headers=rate_headers)

    @app.post("/v1/challenges", responses={**REFUSALS, "404": _detail("this API needs no proof of work")})
    def issue_challenge(wanted: ChallengeRequest,
                        credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> dict:
        """A proof-of-work puzzle for one request: find a nonce (0 <= nonce < 2^64) such that SHA-256(prefix ‖
        nonce as 8 little-endian bytes), read as a big-endian integer, is below 2^256 // hashes; send the
        request with the same body, X-Pow-Challenge: id and X-Pow-Nonce: nonce, before `expires`."""
        if not defended.needs_pow:
            raise HTTPException(404, "this API needs no proof of work")
        if wanted.images > settings.max_batch:
            raise HTTPException(413, f"at most {settings.max_batch} images per request")
        account = account_of(credentials)
        refused = defended.refusal(account.id, account.name)
        if refused:
            raise HTTPException(403, refused)
        challenge = defended.issue(account.id, account.name, wanted.digest, wanted.images)
        return {**challenge.as_dict(), "prefix": challenge.prefix().decode()}

    def admin_allowed(request: Request) -> bool:
        if settings.admin_token_hash is None:
            return False
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else request.cookies.get("encsteal_admin", "")
        return bool(token) and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), settings.admin_token_hash)

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin(request: Request) -> Response:
        if settings.admin_token_hash is None:
            raise HTTPException(404, "no console: start the server with an admin token")
        if not admin_allowed(request):
            return RedirectResponse("/admin/login", status_code=303)
        usages = ledger.usage()
        figures = ledger.defense_figures()
        accounts = [console.ConsoleAccount(
            u.name, u.used, u.quota, u.requests, format_money(u.spent_micros), format_money(u.price_micros), u.disabled,
            figures[u.name].coverage if u.name in figures else None, u.name in figures and figures[u.name].flagged,
            figures[u.name].flagged_at if u.name in figures else None,
            figures[u.name].latest if u.name in figures else {},
            ledger.defense_history(u.name) if u.name in figures else []) for u in usages]
        return HTMLResponse(console.render(accounts, model=model.model_id, defenses=describe(settings.defenses)),
                            headers={"Cache-Control": "no-store"})

    @app.get("/admin/login", response_class=HTMLResponse, include_in_schema=False)
    def admin_login_page() -> Response:
        return HTMLResponse(console.login_page())

    @app.post("/admin/login", include_in_schema=False)
    async def admin_login(request: Request) -> Response:
        body = await request.body()
        if len(body) > 4096:
            raise HTTPException(413, "a sign-in form is smaller than that")
        token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if settings.admin_token_hash is None or not hmac.compare_digest(
                hashlib.sha256(token.encode()).hexdigest(), settings.admin_token_hash):
            return HTMLResponse(console.login_page("wrong admin token"), status_code=401)
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie("encsteal_admin", token, httponly=True, samesite="strict")
        return response

    @app.get("/v1/model")
    def model_info() -> dict:
        return {"model_id": model.model_id, "input_size": model.image_size, "channels": 3,
                "proof_of_work": defended.needs_pow,
                "feature_dim": model.feature_dim, "dtype": "float32", "formats": [codec.JSON, codec.NPY],
                "max_batch": settings.max_batch, "max_bytes": settings.max_bytes,
                "max_image_pixels": settings.max_image_pixels, "max_request_pixels": settings.max_request_pixels,
                "replay_ttl": settings.replay_ttl, "description": settings.description}

    @app.get("/v1/usage", responses=REFUSALS)
    def account_usage(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> dict:
        account = account_of(credentials)
        usage = ledger.usage(account.name)[0]
        # money as exact decimals (a JSON number's text, at most 6 places) and as integer micro-units
        return {"account": usage.name, "used": usage.used, "quota": usage.quota, "remaining": usage.remaining,
                "spent": usage.spent_micros / MICROS, "spent_micros": usage.spent_micros,
                "price": usage.price_micros / MICROS, "price_micros": usage.price_micros, "requests": usage.requests}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    register(app, Endpoints(served, limits, admit, bearer, account_of, read_body, idempotency_key_of, serve_request,
                            pow_headers_of))
    return app


def app_from_env() -> FastAPI:
    """The app of `encsteal serve` (uvicorn imports it in every worker process)."""
    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))
