"""`HttpTarget`: the embedding API behind the Target interface, so an attack cannot tell it from a local one.

It sends uint8 batches as .npy, retries on 429 (after Retry-After), on 5xx and on lost connections with
exponential backoff, and sends every request with an Idempotency-Key derived from its images: a request
whose answer was lost is asked again and answered from the provider's ledger without a second charge.
Wrap it in a CachedTarget (the pipeline does) so a killed run re-buys nothing. A replay is free only while
the provider keeps it (see the server's replay_ttl) and only from the same model: a request repeated after
that is billed again.

Batches are cut to the server's limits (max_batch images and max_request_pixels pixels per request, from
GET /v1/model). `cost` adds up the exact costs the API reported (a Decimal). After an answer whose
x-ratelimit-remaining-requests is 0 the next request waits for x-ratelimit-reset-requests (`throttle`), so
an account's rate is kept rather than hit. Other services' dialects: encsteal.service.dialects.target.
"""

from __future__ import annotations

import hashlib
import time
from decimal import Decimal

import httpx
import numpy as np
import torch

from encsteal.errors import EncstealError
from encsteal.service import codec
from encsteal.service.ratelimit import Throttle
from encsteal.target import QueryError, check_images


class ApiError(EncstealError):
    """The embedding API refused a request or cannot be reached."""


class QuotaExhausted(ApiError):
    pass


RETRY_STATUS = {429, 502, 503, 504}
"""Worth waiting for: the rate limit, and a proxy or server that is restarting (a 500 would only repeat)."""


class HttpTarget:
    def __init__(self, url: str, api_key: str, *, batch_size: int = 256, timeout: float = 120.0,
                 retries: int = 8, backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        if not api_key:
            raise ApiError("no API key for the embedding API: set target.api_key or the environment variable in target.api_key_env")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.throttle = Throttle(max_backoff)
        self.client = httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {api_key}"},
                                   event_hooks=self.throttle.hooks())
        self.queries = 0
        """Images billed by the API to this object (replays of paid requests are free)."""
        self.cost = Decimal(0)
        """Money billed to this object, exactly, as the API reported it."""
        info = self._request("GET", "/v1/model").json()
        self.model_id: str = info["model_id"]
        self.image_size: int = info["input_size"]
        self.feature_dim: int = info["feature_dim"]
        self.batch_size = min(batch_size, info.get("max_batch", batch_size))
        self.max_request_pixels: int | None = info.get("max_request_pixels")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        per_request = self.batch_size
        if self.max_request_pixels is not None:
            per_request = max(1, min(per_request, self.max_request_pixels // (images.shape[2] * images.shape[3])))
        return torch.cat([self._embed_batch(chunk) for chunk in images.split(per_request)])

    def usage(self) -> dict:
        """The account's queries, quota and spending, as the provider's ledger has them."""
        return self._request("GET", "/v1/usage").json()

    def close(self) -> None:
        self.client.close()

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        body = codec.encode_npy(images.contiguous().numpy())
        key = hashlib.sha256(body).hexdigest()
        response = self._request("POST", "/v1/embeddings", content=body, headers={
            "Content-Type": codec.NPY, "Accept": codec.NPY, "Idempotency-Key": key})
        features = codec.decode_npy(response.content)
        if features.shape[0] != len(images):
            raise QueryError(f"the API answered {len(images)} images with {features.shape[0]} feature vectors")
        self.queries += int(response.headers.get("x-queries-billed", 0))
        self.cost += Decimal(response.headers.get("x-cost", "0"))
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ApiError(f"cannot reach the embedding API at {self.url} ({type(exc).__name__}: {exc}); "
                                   "check the URL and that the server is running") from None
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff)
                continue
            if response.status_code < 400:
                return response
            if response.status_code in RETRY_STATUS and not last:
                retry_after = response.headers.get("retry-after")
                wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else delay
                time.sleep(min(wait, self.max_backoff))
                delay = min(2 * delay, self.max_backoff)
                continue
            detail = _detail(response)
            if response.status_code == 402:
                raise QuotaExhausted(f"the embedding API refused the request: {detail}; queries bought so far are kept")
            raise ApiError(f"the embedding API at {self.url} answered {response.status_code}: {detail}")
        raise AssertionError("unreachable")


def _detail(response: httpx.Response) -> str:
    """The refusal's sentence: `detail` (this API), `error.message` (OpenAI-style), `message` (Cohere) or
    `status.description` and `details` (Clarifai)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return response.text.strip()[:200]
    error, status = body.get("error"), body.get("status")
    if "detail" in body:
        return str(body["detail"])
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    if "message" in body:
        return str(body["message"])
    if isinstance(status, dict):
        return " ".join(str(status[part]) for part in ("description", "details") if status.get(part))
    return response.text.strip()[:200]
