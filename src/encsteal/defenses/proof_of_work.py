"""Calibrated proof-of-work (Dziedzic, Kaleem, Lu, Papernot: "Increasing the Cost of Model Extraction with
Calibrated Proof of Work", ICLR 2022; official code cleverhans-lab/model-extraction-iclr, pow/).

Every request must carry the solution of a hashcash puzzle (Back 2002) that the API issued for it: find a nonce
such that

    SHA-256(challenge ‖ nonce) < 2^256 / H

which takes H hashes on average, whatever the solver does, and one hash to check. The paper makes the
puzzle's difficulty follow how much the user's queries have revealed so far (their privacy cost under PATE,
mapped to a time per query fitted so that legitimate users pay at most about twice their undefended time),
so that legitimate users pay little and extraction, whose queries reveal much more, pays up to 100 times
more. Encoders have no PATE cost; what an account's answers reveal is measured here by its coverage of the
embedding space (B4B's buckets, encsteal.defenses.coverage), and the work per image grows with it as the
paper's time grows with the privacy cost, exponentially (their timing is log-linear in the cost):

    H = images · base · factor^(min(c, β) / β)

`base` hashes per image at coverage 0 (2,000: about 1.3 ms of CPython on one core), `factor` times more at
coverage β and beyond.

The protocol: the API issues a `Challenge` bound to the account, the request's body (its SHA-256) and a
difficulty read from the account's state; it expires after `ttl` seconds; the client solves it and sends the
nonce with the request; the API checks it once (single use) and refuses a wrong, stale, spent or misbound one.
The difficulty is what the account's coverage is when the challenge is issued; the defense's post-processing
step changes no feature, it only adds the request's buckets to the account's state.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from encsteal.defenses.accounts import AccountAware, Answer, pack, unpack
from encsteal.defenses.coverage import Coverage, CoverageSettings
from encsteal.errors import EncstealError

MAX_HASHES = 2**48
"""No puzzle asks for more (about two CPU-months of CPython)."""


class PowConfig(CoverageSettings):
    name: Literal["pow"] = "pow"
    base: int = Field(2000, ge=1)
    """Hashes per image (on average) at coverage 0."""
    factor: float = Field(100.0, ge=1)
    """Work per image at coverage beta, over the work at coverage 0."""
    beta: float = Field(20.0, gt=0, le=100)
    """Coverage (%) at which the work per image reaches base · factor."""
    ttl: float = Field(300.0, gt=0)
    """Seconds a challenge stays valid."""


class PuzzleError(EncstealError):
    """A proof-of-work solution that is missing, wrong, stale, spent, or for another request."""


@dataclass(frozen=True)
class Challenge:
    id: str
    account: str
    digest: str
    """SHA-256 (hex) of the request body the challenge is for."""
    images: int
    hashes: int
    """Expected work: the solution's hash must lie below 2^256 / hashes."""
    expires: float

    def prefix(self) -> bytes:
        return f"encsteal-pow|{self.id}|{self.account}|{self.digest}|{self.images}|{self.hashes}|".encode()

    @property
    def bound(self) -> int:
        return (1 << 256) // self.hashes

    def as_dict(self) -> dict:
        return {"id": self.id, "account": self.account, "digest": self.digest, "images": self.images,
                "hashes": self.hashes, "expires": self.expires}


def hashes_per_image(config: PowConfig, coverage: float) -> float:
    """base · factor^(min(c, β)/β)."""
    return config.base * config.factor ** (min(coverage, config.beta) / config.beta)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def valid(challenge: Challenge, nonce: int) -> bool:
    if not 0 <= nonce < 2**64:
        return False
    digest = hashlib.sha256(challenge.prefix() + nonce.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "big") < challenge.bound


def solve(challenge: Challenge) -> tuple[int, int]:
    """(nonce, hashes tried): the first nonce from 0 up that solves the puzzle."""
    hasher = hashlib.sha256(challenge.prefix())
    bound = challenge.bound
    nonce = 0
    while True:
        attempt = hasher.copy()
        attempt.update(nonce.to_bytes(8, "little"))
        if int.from_bytes(attempt.digest(), "big") < bound:
            return nonce, nonce + 1
        nonce += 1


def check(challenge: Challenge, nonce: int, account: str, digest: str, images: int, now: float | None = None) -> None:
    """Raise PuzzleError unless `nonce` solves `challenge` for this account, body and number of images, in time
    (spending it, once, is the issuer's part)."""
    now = time.time() if now is None else now
    if challenge.account != account:
        raise PuzzleError("this proof-of-work challenge was issued to another account")
    if challenge.digest != digest:
        raise PuzzleError("this proof-of-work challenge was issued for another request body")
    if challenge.images != images:
        raise PuzzleError(f"this proof-of-work challenge was issued for {challenge.images} images, not {images}")
    if challenge.expires < now:
        raise PuzzleError("this proof-of-work challenge has expired; ask for a new one")
    if not valid(challenge, nonce):
        raise PuzzleError("wrong proof-of-work solution")


class ProofOfWork(AccountAware):
    """The post-processing half (features unchanged; the request's buckets added to the account's state) and
    the difficulty of the account's next challenge."""

    name = "pow"

    def __init__(self, config: PowConfig) -> None:
        self.config = config
        self.coverage = Coverage(config)

    def coverage_of(self, state: bytes | None) -> float:
        saved = unpack(state) if state else {}
        return self.coverage.percent(self.coverage.unpacked(saved.get("buckets")))

    def challenge(self, account: str, state: bytes | None, digest: str, images: int,
                  now: float | None = None) -> Challenge:
        now = time.time() if now is None else now
        hashes = min(MAX_HASHES, max(1, round(images * hashes_per_image(self.config, self.coverage_of(state)))))
        return Challenge(secrets.token_hex(16), account, digest, images, hashes, now + self.config.ttl)

    def answer(self, images: torch.Tensor, features: torch.Tensor, account: str, state: bytes | None) -> Answer:
        saved = unpack(state) if state else {}
        buckets = self.coverage.hit(self.coverage.unpacked(saved.get("buckets")), features)
        queries = int(saved.get("queries", 0)) + len(features)
        coverage = self.coverage.percent(buckets)
        return Answer(features, pack(buckets=self.coverage.packed(buckets), queries=np.array(queries)),
                      {"coverage": coverage, "queries": float(queries),
                       "hashes_per_image": hashes_per_image(self.config, coverage)})
