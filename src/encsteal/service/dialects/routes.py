"""The compatible routes on the server: the OpenAI shapes on POST /v1/embeddings (read by `parse_embeddings`,
answered by the native route), GET /v1/models, POST /v2/embed (Cohere's), and their OpenAI-style refusals.

They share everything with the native route: the account and its key, the rate limit, the bounded reading
and decoding, the quota, billing, replays and the defenses (`Endpoints.serve_request` is the native route's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from encsteal.service import codec, ratelimit
from encsteal.service.dialects import cohere, openai
from encsteal.service.dialects.common import FieldRefused, ServedModel, compatible_errors, refused
from encsteal.service.ledger import Account

SHAPES = ("images", "input", "messages")
"""The keys that tell the JSON bodies of POST /v1/embeddings apart: exactly one is present."""
ERROR_MESSAGE_KEY = {"/v1/embeddings": "detail", "/v1/models": "detail", "/v2/embed": "message"}


@dataclass(frozen=True)
class Endpoints:
    """What the app shares with the compatible routes (built in create_app)."""

    model: ServedModel
    limits: codec.Limits
    admit: Callable[[Account], dict[str, str]]
    """Takes one request from the account's rate (and refuses a flagged account): its rate-limit headers."""
    bearer: HTTPBearer
    account_of: Callable[[HTTPAuthorizationCredentials | None], Account]
    read_body: Callable[[Request], Awaitable[bytes]]
    idempotency_key_of: Callable[[Request], str | None]
    serve_request: Callable[..., tuple[np.ndarray, int, int | None]]
    """(account, body, content_type, idempotency_key, parsed=request, pow_headers=...) -> (features, billed,
    quota left)."""
    pow_headers_of: Callable[[Request], tuple[str | None, str | None]]
    """The proof-of-work challenge and nonce a request carries (the `pow` defense)."""


def parse_embeddings(body: bytes, content_type: str, limits: codec.Limits, model: ServedModel) -> codec.ParsedRequest:
    """A body of POST /v1/embeddings, read up to its number of images: .npy, or JSON of one of the shapes
    (`images`: this API's own; `input` or `messages`: OpenAI's). FieldRefused if it is none of them."""
    try:
        if codec.media_type(content_type) != codec.JSON:
            return codec.parse_request(body, content_type, limits)
        payload = codec.load_json(body, limits)
        shapes = [key for key in SHAPES if key in payload]
        if len(shapes) != 1:
            raise codec.BadRequest('send exactly one of "images" (this API\'s own shape), "input" (OpenAI\'s) or '
                                   f'"messages" (one image as a chat message); got {", ".join(shapes) or "none"}', 422,
                                   shapes[1] if len(shapes) > 1 else "input")
        if shapes == ["images"]:
            return codec.counted(codec.JsonRequest(payload, limits), limits)
        return openai.parse(payload, limits, model)
    except codec.BadRequest as exc:
        raise refused(exc) from None


def parse_cohere(body: bytes, content_type: str, limits: codec.Limits, model: ServedModel) -> cohere.CohereRequest:
    if codec.media_type(content_type) != codec.JSON:
        raise FieldRefused(415, f"unsupported Content-Type '{content_type or '(none)'}': send {codec.JSON}", None)
    try:
        return cohere.parse(codec.load_json(body, limits), limits, model)
    except codec.BadRequest as exc:
        raise refused(exc) from None


def register(app: FastAPI, endpoints: Endpoints) -> None:
    """GET /v1/models, POST /v2/embed, and OpenAI-style refusals on the compatible paths."""
    model, limits = endpoints.model, endpoints.limits
    app.add_exception_handler(StarletteHTTPException, compatible_errors(ERROR_MESSAGE_KEY))
    refusals = {"400": "malformed input (body, image, header)", "401": "missing or unknown API key",
                "402": "over the quota (not worth repeating: x-should-retry is false)", "403": "account disabled",
                "404": "no such model", "409": "a request with this Idempotency-Key is being billed; repeat it",
                "413": "payload, batch or pixels over the limits of GET /v1/model",
                "415": "unsupported Content-Type", "422": "input the API cannot embed",
                "429": "over the rate limit; see Retry-After and retry-after-ms"}
    doc = cohere.document(limits, model, refusals)
    doc["responses"]["200"]["headers"] = ratelimit.HEADERS_DOC
    doc["responses"]["429"]["headers"] = {**ratelimit.RETRY_HEADERS_DOC, **ratelimit.HEADERS_DOC}
    doc["parameters"] = [{"name": "Idempotency-Key", "in": "header", "required": False,
                          "schema": {"type": "string", "pattern": r"^[!-~]{1,128}$"},
                          "description": "repeat a request with the same key to receive its embeddings again free"}]

    @app.get("/v1/models", summary="The served model, as OpenAI lists models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": model.created,
                                            "owned_by": "encsteal"}]}

    @app.post("/v2/embed", openapi_extra=doc, response_class=Response)
    async def embed_v2(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Security(endpoints.bearer)) -> Response:
        key = endpoints.idempotency_key_of(request)
        account = await run_in_threadpool(endpoints.account_of, credentials)
        headers = await run_in_threadpool(endpoints.admit, account)
        body = await endpoints.read_body(request)
        content_type = request.headers.get("content-type", "")
        parsed = await run_in_threadpool(parse_cohere, body, content_type, limits, model)
        features, billed, remaining = await run_in_threadpool(
            endpoints.serve_request, account, body, content_type, key, parsed=parsed,
            pow_headers=endpoints.pow_headers_of(request))
        return cohere.answer(parsed, features, billed, remaining, billed * account.price_micros, headers)
