"""`HttpTarget`: the embedding API behind the Target interface, so an attack cannot tell it from a local one.

It sends uint8 batches as .npy, retries on 429 (after Retry-After), on 5xx and on lost connections with
exponential backoff, and sends every request with an Idempotency-Key derived from its images: a request
whose answer was lost is asked again and answered from the provider's ledger without a second charge.
A 403 (the account disabled, or flagged as stealing under the policy `refuse`) raises ApiRefused, an
AccountRefused. Wrap it in a CachedTarget (the pipeline does) so a killed run re-buys nothing. A replay is free only while
the provider keeps it (see the server's replay_ttl) and only from the same model: a request repeated after
that is billed again.

Batches are cut to the server's limits (max_batch images and max_request_pixels pixels per request, from
GET /v1/model). `cost` adds up the exact costs the API reported (a Decimal). After an answer whose
x-ratelimit-remaining-requests is 0 the next request waits for x-ratelimit-reset-requests (`throttle`), so
an account's rate is kept rather than hit. Other services' dialects: encsteal.service.dialects.target.

An API with proof-of-work (GET /v1/model says `proof_of_work`) gets a challenge for every request (POST
/v1/challenges, bound to the request's body), solved here before the request is sent; `pow_seconds` adds up
the CPU seconds spent solving.
"""

from __future__ import annotations

import hashlib
import time
from decimal import Decimal

import httpx
import numpy as np
import torch

from encsteal.defenses.accounts import AccountRefused
from encsteal.defenses.proof_of_work import Challenge, solve
from encsteal.errors import EncstealError
from encsteal.service import codec
from encsteal.service.ratelimit import Throttle
from encsteal.target import QueryError, check_images


class ApiError(EncstealError):
    """The embedding API refused a request or cannot be reached."""


class QuotaExhausted(ApiError):
    pass


class ApiRefused(ApiError, AccountRefused):
    """The API refuses the account (403: disabled, or flagged as stealing under the policy `refuse`)."""


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
        self.pow_seconds = 0.0
        """CPU seconds spent solving the API's proof-of-work puzzles (when it asks for them)."""
        self.pow_hashes = 0
        info = self._request("GET", "/v1/model").json()
        self.model_id: str = info["model_id"]
        self.image_size: int = info["input_size"]
        self.feature_dim: int = info["feature_dim"]
        self.batch_size = min(batch_size, info.get("max_batch", batch_size))
        self.max_request_pixels: int | None = info.get("max_request_pixels")
        self.proof_of_work: bool = bool(info.get("proof_of_work"))

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
        headers = {"Content-Type": codec.NPY, "Accept": codec.NPY, "Idempotency-Key": key}
        if not self.proof_of_work:
            response = self._request("POST", "/v1/embeddings", content=body, headers=headers)
        else:
            for _ in range(3):  # a challenge that expired while it was solved, or was spent by a retry: a new one
                response = self._request("POST", "/v1/embeddings", content=body, passthrough={409},
                                         headers={**headers, **self._solved(key, len(images))})
                if response.status_code != 409:
                    break
            else:
                raise ApiError(f"the embedding API refused three proof-of-work solutions: {_detail(response)}")
        features = codec.decode_npy(response.content)
        if features.shape[0] != len(images):
            raise QueryError(f"the API answered {len(images)} images with {features.shape[0]} feature vectors")
        self.queries += int(response.headers.get("x-queries-billed", 0))
        self.cost += Decimal(response.headers.get("x-cost", "0"))
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def _solved(self, digest: str, images: int) -> dict[str, str]:
        """The proof-of-work headers for a request body of SHA-256 `digest`: a challenge, solved here."""
        issued = self._request("POST", "/v1/challenges", json={"digest": digest, "images": images}).json()
        challenge = Challenge(issued["id"], issued["account"], issued["digest"], issued["images"], issued["hashes"],
                              issued["expires"])
        started = time.process_time()
        nonce, tries = solve(challenge)
        self.pow_seconds += time.process_time() - started
        self.pow_hashes += tries
        return {"X-Pow-Challenge": challenge.id, "X-Pow-Nonce": str(nonce)}

    def _request(self, method: str, path: str, passthrough: set[int] = frozenset(), **kwargs) -> httpx.Response:
        """The response to a request, retried where worth it; an error status raises ApiError, except those in
        `passthrough`, returned."""
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
            if response.status_code < 400 or response.status_code in passthrough:
                return response
            if response.status_code in RETRY_STATUS and not last:
                retry_after = response.headers.get("retry-after")
                wait = min(float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else delay,
                           self.max_backoff)
                time.sleep(wait)
                if response.status_code == 429:  # the rate limit's wait, beside the throttle's own
                    self.throttle.waited += wait
                delay = min(2 * delay, self.max_backoff)
                continue
            detail = _detail(response)
            if response.status_code == 402:
                raise QuotaExhausted(f"the embedding API refused the request: {detail}; queries bought so far are kept")
            if response.status_code == 403:
                raise ApiRefused(f"the embedding API at {self.url} answered 403: {detail}", images=self.queries)
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
