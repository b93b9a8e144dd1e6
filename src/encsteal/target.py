"""The attacker's only view of the victim: `Target.embed(images) -> features`.

An attack receives a Target and nothing else, so it runs unchanged against an encoder in this process
(`LocalTarget`) or a remote embedding API. Query accounting lives here, not in attacks: every target counts
the images it embedded in `queries`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from encsteal.defenses import DefendedEncoder, Defense
from encsteal.defenses.accounts import AccountAware, AccountRefused, SimulatedAccounts, slots
from encsteal.defenses.detection import Detection
from encsteal.defenses.proof_of_work import ProofOfWork, check, solve
from encsteal.errors import EncstealError
from encsteal.models import Encoder
from encsteal.training import channels_last, to_float_batch


class QueryError(EncstealError, ValueError):
    """A query the target cannot answer (wrong dtype, shape or size)."""


@runtime_checkable
class Target(Protocol):
    queries: int
    """Images embedded so far (each one a paid query on a real API)."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images N x 3 x H x W -> float32 features N x D (on the CPU). A row of NaN: an image the target
        could not answer because the provider refused the attacker (encsteal.query_cache.CachedTarget)."""
        ...


def answered(features: torch.Tensor) -> torch.Tensor:
    """Which rows of `features` hold an answer (the others are NaN: refused, see Target.embed)."""
    return torch.isfinite(features).all(dim=1)


def check_images(images: torch.Tensor, image_size: int | None = None) -> None:
    """Raise QueryError unless `images` is a non-empty uint8 batch N x 3 x H x W of the expected size."""
    if not isinstance(images, torch.Tensor):
        raise QueryError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise QueryError(f"images must be uint8 (0-255), got {images.dtype}; convert with (x * 255).round().to(torch.uint8)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise QueryError(f"images must have shape N x 3 x H x W, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise QueryError("an empty batch of images cannot be embedded")
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        raise QueryError(
            f"this encoder takes {image_size}x{image_size} images, got {images.shape[2]}x{images.shape[3]}; "
            f"resize them first (data.image_size={image_size})"
        )


class LocalTarget:
    """An encoder in this process behind the Target interface, with the provider's defenses (if any) applied
    to every answer exactly as the served API applies them.

    With account-aware defenses the target answers one account, `account`, whose state lives in `accounts`
    (simulated accounts; several targets may share them, as sybil accounts share one provider): each batch of
    `batch_size` images is one request, its proof-of-work puzzle solved here (`pow_seconds`: CPU seconds) and
    refused (AccountRefused) once a detection defense with the policy `refuse` has flagged the account. Under the
    policy `throttle` a flagged account's requests are `1 / throttle_rate` seconds apart, as the API's rate limit
    keeps them: the client waits it out, as a real one does (`wait_seconds`)."""

    def __init__(self, encoder: Encoder, *, image_size: int, device: torch.device, batch_size: int = 256,
                 defenses: Sequence[Defense | AccountAware] = (), account: str = "local",
                 accounts: SimulatedAccounts | None = None) -> None:
        self.encoder = encoder.to(device).to(memory_format=torch.channels_last).eval()
        self.model = DefendedEncoder(self.encoder, defenses)
        self.image_size = image_size
        self.device = device
        self.batch_size = batch_size
        self.feature_dim = self.model.feature_dim
        self.account = account
        self.accounts = accounts if accounts is not None else SimulatedAccounts()
        self.queries = 0
        self.pow_seconds = 0.0
        """CPU seconds spent solving this target's proof-of-work puzzles."""
        self.pow_hashes = 0
        self.wait_seconds = 0.0
        """Seconds this target waited for a throttled account's rate."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.image_size)
        features = []
        with torch.inference_mode():
            for chunk in images.split(self.batch_size):
                features.append((self._respond(chunk) if self.model.account_aware
                                 else self.model(channels_last(to_float_batch(chunk, self.device)))).float().cpu())
                self.queries += len(chunk)
        return torch.cat(features)

    def _respond(self, chunk: torch.Tensor) -> torch.Tensor:
        """One request of the account, as the API serves it: refusal or the throttled rate, proof of work, features,
        new states."""
        account = self.accounts.account(self.account)
        interval = 0.0
        for defense, slot in zip(self.model.defenses, slots(self.model.defenses)):
            if not isinstance(defense, Detection) or not Detection.flagged(account.states.get(slot)):
                continue
            if defense.config.policy == "refuse":
                raise AccountRefused(f"the provider refuses account '{self.account}': flagged as stealing",
                                     self.account, account.images)
            if defense.config.policy == "throttle":
                interval = max(interval, 1.0 / defense.config.throttle_rate)
        if interval and account.history:
            wait = account.history[-1]["time"] + interval - time.time()
            if wait > 0:
                time.sleep(wait)
                self.wait_seconds += wait
                account.wait_seconds += wait
        for defense, slot in zip(self.model.defenses, slots(self.model.defenses)):
            if isinstance(defense, ProofOfWork):
                digest = hashlib.sha256(chunk.contiguous().numpy().tobytes()).hexdigest()
                challenge = defense.challenge(self.account, account.states.get(slot), digest, len(chunk))
                started = time.process_time()
                nonce, tries = solve(challenge)
                seconds = time.process_time() - started
                check(challenge, nonce, self.account, digest, len(chunk))
                self.pow_seconds += seconds
                self.pow_hashes += tries
                account.pow_seconds += seconds
                account.pow_hashes += tries
        response = self.model.respond(channels_last(to_float_batch(chunk, self.device)), self.account, account.states)
        self.accounts.record(self.account, response, len(chunk))
        return response.features


class SybilTarget:
    """One attacker behind several accounts: request i (each `embed` call) goes to account i mod k. An account the
    provider refuses is dropped and the request goes to the next one; AccountRefused once every account is."""

    def __init__(self, targets: Sequence[Target]) -> None:
        if not targets:
            raise ValueError("a sybil attacker needs at least one account")
        self.targets = list(targets)
        self.requests = 0
        self.refused: dict[int, AccountRefused] = {}
        """Accounts the provider refused, by index, with the refusal."""

    @property
    def queries(self) -> int:
        return sum(target.queries for target in self.targets)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return next_live_account(self, lambda index: self.targets[index].embed(images))


def next_live_account(sybils, ask):
    """`ask(index)` of the account whose turn it is (request i: account i mod k) among those not refused yet; an
    account that is refused now is marked and the next one asked. Raises the last refusal once all are refused.
    `sybils` has `targets`, `requests` and `refused` (SybilTarget's)."""
    for _ in range(len(sybils.targets)):
        index = sybils.requests % len(sybils.targets)
        sybils.requests += 1
        if index in sybils.refused:
            continue
        try:
            return ask(index)
        except AccountRefused as refusal:
            sybils.refused[index] = refusal
    raise list(sybils.refused.values())[-1]
