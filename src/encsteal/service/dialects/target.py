"""`WireTarget`: an embedding service that speaks another dialect (OpenAI, Cohere, Clarifai; see `WIRES`) behind
the Target interface, with HttpTarget's transport: retries on 429, 502-504 and lost connections (after
Retry-After or retry-after-ms, else with exponential backoff), waiting out x-ratelimit-reset-requests when
an answer says no request remains, and an Idempotency-Key where the dialect carries one. A refusal the
dialect reads as a spent quota (402; OpenAI's 429 `insufficient_quota`; Clarifai's 11004/11006) stops the
run at once with QuotaExhausted instead of being retried.

Images travel as PNG files (lossless). The features come back as float or base64 (decoded either way); the
billed count is read from the service's own report (`usage.prompt_tokens`, `meta.billed_units.images`, or
one operation per image) and added up in `billed`, in the service's unit (`unit`); `cost` adds up money
where the service reports it (encsteal's own server does), else stays None. Wrap it in a CachedTarget, as
the pipeline does, so nothing paid for is bought twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from decimal import Decimal

import httpx
import numpy as np
import torch

from encsteal.service import codec
from encsteal.service.client import ApiError, HttpTarget, QuotaExhausted, _detail
from encsteal.service.dialects import WIRES
from encsteal.service.dialects.common import TryAgain, Wire
from encsteal.service.ledger import money
from encsteal.service.ratelimit import Throttle
from encsteal.target import QueryError

WIRE_NAMES = ("native", *WIRES)


class WireTarget(HttpTarget):
    def __init__(self, url: str, api_key: str, wire: Wire, *, batch_size: int = 256, timeout: float = 120.0,
                 retries: int = 8, backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        if not api_key:
            raise ApiError(f"no API key for the {wire.name} service: set target.api_key or the environment variable "
                           "in target.api_key_env")
        self.url = url.rstrip("/")
        self.wire = wire
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.batch_size = min(batch_size, wire.max_batch)
        self.max_request_pixels = None
        self.throttle = Throttle(max_backoff)
        self.client = httpx.Client(base_url=self.url, timeout=timeout, headers=wire.auth(api_key), event_hooks={
            "request": [self.throttle.before], "response": [self.throttle.after, self._stop_when_spent]})
        self.queries = 0
        """Images answered."""
        self.billed = 0
        """What the service billed, in its own unit (`unit`)."""
        self.unit = wire.unit
        self.cost: Decimal | None = None
        """Money, where the service reports it."""
        self.proof_of_work, self.pow_seconds, self.pow_hashes = False, 0.0, 0  # other services ask for no puzzles
        if wire.model is None:
            try:
                wire.model = wire.discover_model(self.client)
            except (httpx.HTTPError, ValueError, AttributeError):
                wire.model = None
        self.model_id = f"{wire.name}:{self.url}|{wire.model or ''}"
        """Names the service and model (the query cache is keyed by it)."""

    def usage(self) -> dict:
        """What this object bought: images, the service's billed count and unit, and money if reported."""
        return {"images": self.queries, "billed": self.billed, "unit": self.unit,
                "spent": None if self.cost is None else float(self.cost)}

    def billed_units(self) -> dict[str, int]:
        return {self.unit: self.billed}

    def _stop_when_spent(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            response.read()
            if self.wire.quota_spent(response):
                raise QuotaExhausted(f"the {self.wire.name} service refused the request ({response.status_code}): "
                                     f"{_detail(response)}; queries bought so far are kept")

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        try:
            content = json.dumps(self.wire.body([codec.encode_png(image) for image in images])).encode()
        except ValueError as exc:
            raise ApiError(str(exc)) from None
        headers = {"Content-Type": codec.JSON}
        if self.wire.idempotent:
            headers["Idempotency-Key"] = hashlib.sha256(content).hexdigest()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            response = self._request("POST", self.wire.path, content=content, headers=headers)
            try:
                reply = self.wire.read(response.json(), len(images))
                break
            except TryAgain as exc:
                if attempt == self.retries:
                    raise ApiError(f"the {self.wire.name} service kept asking to slow down ({exc})") from None
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise QueryError(f"the service at {self.url} answered in a shape the {self.wire.name} wire cannot "
                                 f"read ({type(exc).__name__}: {exc})") from None
        features = reply.features
        if features.ndim != 2 or features.shape[0] != len(images):
            raise QueryError(f"the service answered {len(images)} images with features of shape {features.shape}")
        self.queries += len(images)
        self.billed += reply.billed
        if reply.cost_micros is not None:
            self.cost = (self.cost or Decimal(0)) + money(reply.cost_micros)
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


def open_target(url: str, api_key: str, wire: str = "native", *, model: str | None = None,
                encoding_format: str | None = None, extra_body: dict | None = None,
                batch_size: int = 256) -> HttpTarget:
    """The attacker's client of the embedding service at `url` speaking `wire` (native: HttpTarget)."""
    if wire == "native":
        return HttpTarget(url, api_key, batch_size=batch_size)
    return WireTarget(url, api_key, WIRES[wire](model, encoding_format, dict(extra_body or {})), batch_size=batch_size)


def served_url(server_url: str, wire: str) -> str:
    """The base URL of `wire` on encsteal's own server at `server_url`."""
    if wire == "native":
        return server_url
    path = WIRES[wire].served_path
    if path is None:
        raise ApiError(f"encsteal's server does not speak the {wire} wire")
    return server_url.rstrip("/") + path
