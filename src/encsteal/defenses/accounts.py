"""Account-aware defenses: post-processors that also read and update the calling account's state.

A stateless defense sees `(images, features)`. An account-aware one (B4B, proof-of-work, detection) also sees
the account it answers and its state for that account, and returns the features, the account's new state and
a few figures to show the provider (coverage, noise, statistics, flags):

    answer(images, features, account, state) -> Answer(features, state, figures)

States are opaque bytes, one per defense of the list (its *slot*: its name, `name.2` for a second one of the
same kind). Where they live is the caller's business: the embedding API keeps them in its account database
(every worker and every restart sees the same), and an in-process target keeps them in `SimulatedAccounts`.
Both run the same `respond`, so an account asking the same images in the same batches gets the same
features in-process and over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from encsteal.errors import EncstealError


class AccountRefused(EncstealError):
    """The provider refuses this account's queries (a detection defense flagged it, with the policy `refuse`).
    `account` names it and `images` counts the images it had been answered, where the refusing side knows them."""

    def __init__(self, message: str, account: str | None = None, images: int | None = None) -> None:
        super().__init__(message)
        self.account, self.images = account, images


@dataclass
class Answer:
    features: torch.Tensor
    state: bytes
    figures: dict[str, float]
    """What the provider sees of this account after the request: coverage (%), queries, noise, statistics,
    `flagged` (1.0 or 0.0)."""


class AccountAware:
    """Base of the account-aware defenses: `answer` instead of `__call__`."""

    name: str = ""
    extra_dims: int = 0
    """Dimensions the defense adds to every feature vector (B4B's padding)."""

    def answer(self, images: torch.Tensor, features: torch.Tensor, account: str, state: bytes | None) -> Answer:
        raise NotImplementedError


def is_account_aware(defense) -> bool:
    return isinstance(defense, AccountAware)


def slots(defenses: Sequence) -> list[str | None]:
    """Each defense's slot in an account's state (None for the stateless ones): its name, then `name.2`, ..."""
    seen: dict[str, int] = {}
    out: list[str | None] = []
    for defense in defenses:
        if not is_account_aware(defense):
            out.append(None)
            continue
        seen[defense.name] = seen.get(defense.name, 0) + 1
        out.append(defense.name if seen[defense.name] == 1 else f"{defense.name}.{seen[defense.name]}")
    return out


@dataclass
class Response:
    features: torch.Tensor
    states: dict[str, bytes]
    figures: dict[str, dict[str, float]]


def respond(defenses: Sequence, images: torch.Tensor, features: torch.Tensor, account: str,
            states: Mapping[str, bytes | None]) -> Response:
    """Every defense in order on one request of `account`, whose states (slot -> bytes, missing: a new
    account) are given; returns the features and the account's new states and figures."""
    new_states: dict[str, bytes] = {}
    figures: dict[str, dict[str, float]] = {}
    for defense, slot in zip(defenses, slots(defenses)):
        if slot is None:
            features = defense(images, features)
            continue
        answer = defense.answer(images, features, account, states.get(slot))
        features, new_states[slot], figures[slot] = answer.features, answer.state, answer.figures
    return Response(features, new_states, figures)


def account_key(secret: int, account: str, purpose: str) -> int:
    """A 63-bit seed for `purpose` (noise, transform, ...) of one account, from the provider's secret: stable
    across requests, workers and restarts, and unguessable without the secret."""
    key = secret.to_bytes(8, "little", signed=True)
    digest = hmac.new(key, f"{purpose}|{account}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def pack(**arrays: np.ndarray) -> bytes:
    """A state as bytes (an uncompressed .npz: arrays only, nothing executable)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(state: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(state), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@dataclass
class SimulatedAccount:
    states: dict[str, bytes] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    """One entry per request: time, images, and each slot's figures."""
    pow_seconds: float = 0.0
    """CPU seconds this account's client spent solving proof-of-work puzzles."""
    pow_hashes: int = 0
    images: int = 0
    wait_seconds: float = 0.0
    """Seconds its client waited for the account's rate (a detection's `throttle` policy)."""


class SimulatedAccounts:
    """Accounts of an in-process target: the API's account states, kept in memory (and in a JSON file after
    every request when `path` is given, so that a resumed run goes on with the states it had)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.accounts: dict[str, SimulatedAccount] = {}
        self.spent_challenges: set[str] = set()
        if path is not None and path.exists():
            for name, entry in json.loads(path.read_text()).items():
                self.accounts[name] = SimulatedAccount(
                    {slot: bytes.fromhex(text) for slot, text in entry["states"].items()}, entry["history"],
                    entry["pow_seconds"], entry["pow_hashes"], entry["images"], entry.get("wait_seconds", 0.0))

    def account(self, name: str) -> SimulatedAccount:
        return self.accounts.setdefault(name, SimulatedAccount())

    def record(self, name: str, response: Response, images: int) -> None:
        account = self.account(name)
        account.states.update(response.states)
        account.images += images
        account.history.append({"time": time.time(), "images": images, "figures": response.figures})
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        tree = {name: {"states": {slot: state.hex() for slot, state in account.states.items()},
                       "history": account.history, "pow_seconds": account.pow_seconds,
                       "pow_hashes": account.pow_hashes, "images": account.images,
                       "wait_seconds": account.wait_seconds}
                for name, account in self.accounts.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(tree))
        os.replace(temporary, self.path)

    def figures(self, name: str) -> dict[str, dict[str, float]]:
        """The account's latest figures per slot (empty before its first request)."""
        history = self.account(name).history
        return history[-1]["figures"] if history else {}
