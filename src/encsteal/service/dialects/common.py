"""What every dialect shares: images as data URIs, float32 vectors as base64, the facts of the served model,
the OpenAI-style error bodies of the compatible routes, and the attacker's `Wire` (how its client speaks one
service)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import ClassVar

import httpx
import numpy as np
from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from encsteal.service import codec

DATA_URI_MEDIA = ("image/png", "image/jpeg", "image/jpg")


@dataclass(frozen=True)
class ServedModel:
    """What the compatible routes say about the served model."""

    name: str
    """What clients send as `model` (ServeSettings.model_name, by default the model_id)."""
    feature_dim: int
    created: int
    """Unix seconds the checkpoint was written (OpenAI's `created` of a model)."""


# ---- images and vectors


def image_text(item: object, param: str) -> str:
    """The base64 text of one image given as a data URI (data:image/png;base64,...) or as bare base64. URLs
    are refused: the API fetches nothing on a client's behalf."""
    if not isinstance(item, str):
        raise codec.BadRequest(f"{param}: an image is a data URI or base64 text, got {type(item).__name__}", 422, param)
    if item.startswith(("http://", "https://")):
        raise codec.BadRequest(f"{param}: image URLs are not fetched; send the image itself as a data URI "
                               "(data:image/png;base64,...)", 422, param)
    if not item.startswith("data:"):
        return item
    header, comma, payload = item.partition(",")
    media, *parameters = header[len("data:"):].split(";")
    if not comma or "base64" not in parameters:
        raise codec.BadRequest(f"{param}: a data URI must be base64-encoded (data:image/png;base64,...)", 422, param)
    if media.lower() not in DATA_URI_MEDIA:
        raise codec.BadRequest(f"{param}: a data URI of '{media}'; send image/png or image/jpeg", 422, param)
    return payload


def data_uri(png_base64: str) -> str:
    return f"data:image/png;base64,{png_base64}"


def vector_base64(vector: np.ndarray) -> str:
    """A feature vector as base64 of its little-endian float32 bytes (what the openai client decodes)."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


def vector_from_base64(text: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").astype(np.float32)
    except (binascii.Error, ValueError):
        raise ValueError("an embedding in base64 is not base64 of float32 values") from None


# ---- error bodies on the compatible routes

ERRORS = {400: ("invalid_request_error", "invalid_request"), 401: ("invalid_request_error", "invalid_api_key"),
          402: ("insufficient_quota", "insufficient_quota"), 403: ("permission_error", "account_disabled"),
          404: ("invalid_request_error", "model_not_found"), 405: ("invalid_request_error", "method_not_allowed"),
          409: ("conflict_error", "request_in_progress"), 413: ("invalid_request_error", "request_too_large"),
          415: ("invalid_request_error", "unsupported_media_type"), 422: ("invalid_request_error", "invalid_input"),
          428: ("invalid_request_error", "proof_of_work_required"), 429: ("requests", "rate_limit_exceeded")}
"""status -> (error.type, error.code), after OpenAI's (429 `requests`/`rate_limit_exceeded`, 401 `invalid_api_key`)."""
RETRIED = {408, 409, 429}
"""Statuses worth repeating (and 5xx): `x-should-retry: true`; every other refusal says `false`."""


class FieldRefused(HTTPException):
    """A refusal caused by one field of the request (`param` of the error body)."""

    def __init__(self, status: int, message: str, param: str | None) -> None:
        super().__init__(status, message)
        self.param = param


def refused(exc: codec.BadRequest) -> FieldRefused:
    return FieldRefused(exc.status, str(exc), exc.param)


def error_body(status: int, message: str, param: str | None, *, key: str) -> dict:
    """{"error": {"message", "type", "param", "code"}, key: message}: `key` is `detail` on /v1 routes (what
    this API's own clients read) and `message` on /v2/embed (what Cohere's clients print)."""
    kind, code = ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}, key: message}


def error_schema(key: str) -> dict:
    """The OpenAPI schema of `error_body`."""
    return {"type": "object", "required": ["error", key], "properties": {
        key: {"type": "string"},
        "error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def error_doc(description: str, key: str = "detail") -> dict:
    return {"description": description, "content": {codec.JSON: {"schema": error_schema(key)}}}


def compatible_errors(paths: dict[str, str]):
    """An exception handler giving the refusals on `paths` (path -> key of the message) OpenAI-style bodies
    and `x-should-retry`; every other path keeps FastAPI's {"detail": ...}."""

    async def handle(request: Request, exc: StarletteHTTPException):
        key = paths.get(request.url.path)
        if key is None:
            return await http_exception_handler(request, exc)
        param = exc.param if isinstance(exc, FieldRefused) else None
        retry = exc.status_code in RETRIED or exc.status_code >= 500
        return JSONResponse(error_body(exc.status_code, str(exc.detail), param, key=key), exc.status_code,
                            headers={**(exc.headers or {}), "x-should-retry": "true" if retry else "false"})

    return handle


# ---- the attacker's side


@dataclass
class Reply:
    """What one answer of a service held."""

    features: np.ndarray
    """float32 N x D, in the order of the request's images."""
    billed: int
    """What the service says it billed, in its own unit (`Wire.unit`)."""
    cost_micros: int | None = None
    """Money, where the service reports it (encsteal's own server does): micro-units of its currency."""


class TryAgain(Exception):
    """An answer that asks to repeat the request later (a throttled request answered with 200)."""


class Wire:
    """How the attacker's client speaks one embedding service: the request it sends, the reply it reads, the
    refusals that mean the quota is spent. `WireTarget` does the transport (retries, throttling, the cache).

    `url` conventions follow each service's own SDK: OpenAI's base URL ends in /v1, Cohere's is the host,
    Clarifai's is the model's URL."""

    name: ClassVar[str]
    path: ClassVar[str]
    """Where embeddings are asked for, relative to the base URL."""
    max_batch: ClassVar[int]
    """Images per request the service documents (the client sends at most this many, fewer if configured)."""
    unit: ClassVar[str]
    """What the service bills: images, tokens, operations."""
    idempotent: ClassVar[bool]
    """Whether requests carry an Idempotency-Key (encsteal's server answers a repeated one from its ledger;
    services that do not know the header ignore it)."""
    default_format: ClassVar[str] = "float"
    served_path: ClassVar[str | None] = None
    """Its base URL on encsteal's own server, relative to the server's root; None: the server does not speak it."""

    def __init__(self, model: str | None, encoding_format: str | None, extra_body: dict) -> None:
        self.model = model
        self.encoding_format = encoding_format or self.default_format
        self.extra_body = extra_body

    def auth(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def discover_model(self, client: httpx.Client) -> str | None:
        """The model to ask for when none is configured (None: the wire needs none, or it cannot tell)."""
        return None

    def body(self, images: list[str]) -> dict:
        """The JSON request for these images (base64 PNG files)."""
        raise NotImplementedError

    def read(self, answer: dict, count: int) -> Reply:
        """The features and billing of a 2xx answer to a request of `count` images; ValueError if it is not one."""
        raise NotImplementedError

    def quota_spent(self, response: httpx.Response) -> bool:
        """Whether a refusal says the account's quota or credit is spent (never worth repeating)."""
        return response.status_code == 402


def cost_of(answer: dict) -> int | None:
    """encsteal's own figure of money in an answer, in micro-units (exact), if present."""
    micros = answer.get("cost_micros")
    return micros if isinstance(micros, int) else None
