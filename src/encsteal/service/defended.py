"""The account-aware defenses of a served model, on the account database (encsteal.service.account_states).

For every request of an account, in this order:

1. `refusal`: a detection defense with the policy `refuse` has flagged the account: 403, nothing computed.
2. `verify`: with a proof-of-work defense, the request names a challenge (`X-Pow-Challenge`) and its solution
   (`X-Pow-Nonce`); the challenge must be this account's, for this body and number of images, unexpired,
   solved, and not spent; it is spent here, once.
3. `answer`: the encoder's features through the defenses with the account's states as stored, and a writer
   that stores the new states by compare-and-set inside the request's billing transaction (StateConflict:
   bill nothing, answer again from the states now stored). A detection defense with the policy `throttle`
   that flags the account lowers its rate limit in the same transaction.

Challenges come from `issue` (POST /v1/challenges): the work asked for follows the account's coverage as the
proof-of-work defense holds it when the challenge is issued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy import Connection, Engine, update

from encsteal.defenses import DefendedEncoder
from encsteal.defenses.accounts import slots
from encsteal.defenses.detection import Detection
from encsteal.defenses.proof_of_work import Challenge, ProofOfWork, PuzzleError, check
from encsteal.service import account_states
from encsteal.service.ledger import Account


class PowRequired(PuzzleError):
    """A request without the proof-of-work headers, to an API that needs them."""


class PowStale(PuzzleError):
    """A challenge that is spent or expired: ask for a new one."""


@dataclass
class Answered:
    features: np.ndarray
    write: Callable[[Connection], None]
    """Stores the account's new states; raises account_states.StateConflict if they moved meanwhile."""


class AccountDefenses:
    def __init__(self, encoder: DefendedEncoder, engine: Engine) -> None:
        self.encoder = encoder
        self.engine = engine
        self.slots = slots(encoder.defenses)
        self.active = encoder.account_aware
        self.pow = [(d, s) for d, s in zip(encoder.defenses, self.slots) if isinstance(d, ProofOfWork)]
        self.detections = [(d, s) for d, s in zip(encoder.defenses, self.slots) if isinstance(d, Detection)]

    @property
    def needs_pow(self) -> bool:
        return bool(self.pow)

    def _states(self, account_id: int) -> account_states.Versions:
        with self.engine.connect() as connection:
            return account_states.read_states(connection, account_id)

    def refusal(self, account_id: int, name: str) -> str | None:
        """Why the account is refused (None: it is not)."""
        refusing = [slot for defense, slot in self.detections if defense.config.policy == "refuse"]
        if not refusing:
            return None
        states = self._states(account_id)
        if any(slot in states and Detection.flagged(states[slot][1]) for slot in refusing):
            return f"account '{name}' is flagged as stealing and refused; contact the provider"
        return None

    def issue(self, account_id: int, name: str, digest: str, images: int) -> Challenge:
        """A challenge for this account's next request (of `images` images, body SHA-256 `digest`)."""
        defense, slot = self.pow[0]
        state = self._states(account_id).get(slot)
        challenge = defense.challenge(name, None if state is None else state[1], digest, images)
        with self.engine.begin() as connection:
            account_states.issue(connection, account_id, challenge)
            account_states.prune_challenges(connection)
        return challenge

    def verify(self, account_id: int, name: str, challenge_id: str | None, nonce: str | None, digest: str,
               images: int) -> None:
        """Check and spend the request's proof of work (PuzzleError and its kinds otherwise)."""
        if not challenge_id or nonce is None:
            raise PowRequired("this API needs proof of work: POST /v1/challenges with the body's SHA-256 and its number "
                              "of images, solve the puzzle, and send X-Pow-Challenge and X-Pow-Nonce")
        try:
            solution = int(nonce)
        except ValueError:
            raise PuzzleError("X-Pow-Nonce must be a decimal integer") from None
        with self.engine.begin() as connection:
            found = account_states.challenge(connection, challenge_id)
            if found is None or found[1] != account_id:
                raise PuzzleError("unknown proof-of-work challenge for this account")
            challenge, _, spent = found
            if spent is not None:
                raise PowStale("this proof-of-work challenge was used already; ask for a new one")
            try:
                check(challenge, solution, name, digest, images)
            except PuzzleError as exc:
                raise (PowStale(str(exc)) if "expired" in str(exc) else exc) from None
            if not account_states.spend(connection, challenge_id):
                raise PowStale("this proof-of-work challenge was used already; ask for a new one")

    def answer(self, images: torch.Tensor, clean: torch.Tensor, account_id: int, name: str) -> Answered:
        """The features for the account from the encoder's `clean` features of `images` (float in [0, 1])."""
        read = self._states(account_id)
        with torch.inference_mode():
            response = self.encoder.respond_to(images, clean, name, {slot: state for slot, (_, state) in read.items()})
        features = response.features.float().cpu().numpy()
        throttle = [defense.config.throttle_rate for defense, slot in self.detections
                    if defense.config.policy == "throttle" and response.figures.get(slot, {}).get("flagged")]

        def write(connection: Connection) -> None:
            account_states.write_states(connection, account_id, read, response.states, response.figures, len(images))
            if throttle:
                rate = min(throttle)
                connection.execute(update(Account).where(Account.id == account_id,
                                                         (Account.rate.is_(None)) | (Account.rate > rate))
                                   .values(rate=rate, burst=1))

        return Answered(features, write)

    def overview(self, account_ids: list[int] | None = None) -> dict[int, account_states.AccountFigures]:
        if not self.active:
            return {}
        with self.engine.connect() as connection:
            return account_states.figures_of(connection, account_ids)

