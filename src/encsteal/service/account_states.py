"""The account-aware defenses' part of the account database: per-account states, their history, and
proof-of-work challenges. In the same database as the ledger, so every worker process and every restart sees
the same, and written in the billing transaction of the request that changed them.

    defense_states   (account, slot) -> version, state: the bytes an account-aware defense keeps for an account
    defense_events   one row per request and defense: the figures it reported (coverage, σ, W, flag, ...)
    pow_challenges   issued puzzles: account, request body digest, images, work, expiry, and when spent

Concurrent requests of one account are safe by compare-and-set, as the ledger's rate limiter is: a request
reads the account's states with their versions, computes its answer, and writes the new states only where
the versions are still those it read; otherwise the billing transaction is rolled back (`StateConflict`) and
the request computes its answer again from the states now stored. A challenge is spent by one conditional
update, so it is accepted once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from encsteal.defenses.proof_of_work import Challenge

metadata = MetaData()

defense_states = Table(
    "defense_states", metadata,
    Column("account_id", Integer, primary_key=True),
    Column("slot", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("updated", Float, nullable=False),
)

defense_events = Table(
    "defense_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, nullable=False, index=True),
    Column("slot", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("images", Integer, nullable=False),
    Column("queries", Integer),
    Column("coverage", Float),
    Column("sigma", Float),
    Column("prada_w", Float),
    Column("hashes_per_image", Float),
    Column("flagged", Integer),
)

pow_challenges = Table(
    "pow_challenges", metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", Integer, nullable=False, index=True),
    Column("account", String(200), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("images", Integer, nullable=False),
    Column("hashes", BigInteger, nullable=False),
    Column("issued", Float, nullable=False),
    Column("expires", Float, nullable=False, index=True),
    Column("spent", Float, nullable=True),
)

FIGURES = ("queries", "coverage", "sigma", "prada_w", "hashes_per_image", "flagged")


class StateConflict(Exception):
    """Another request of the account changed its states since they were read."""


Versions = dict[str, tuple[int, bytes]]
"""slot -> (version, state) as read."""


def read_states(connection: Connection, account_id: int) -> Versions:
    rows = connection.execute(select(defense_states.c.slot, defense_states.c.version, defense_states.c.state)
                              .where(defense_states.c.account_id == account_id))
    return {slot: (version, bytes(state)) for slot, version, state in rows}


def write_states(connection: Connection, account_id: int, read: Versions, states: dict[str, bytes],
                 figures: dict[str, dict[str, float]], images: int, now: float | None = None) -> None:
    """Store the account's new states where their versions are still those `read` (StateConflict otherwise),
    and a history row per slot. Call inside the request's billing transaction."""
    now = time.time() if now is None else now
    for slot, state in states.items():
        if slot in read:
            moved = connection.execute(
                update(defense_states)
                .where(defense_states.c.account_id == account_id, defense_states.c.slot == slot,
                       defense_states.c.version == read[slot][0])
                .values(version=read[slot][0] + 1, state=state, updated=now)).rowcount
            if not moved:
                raise StateConflict(slot)
        else:
            try:  # a concurrent first request of the account inserted it: the transaction is rolled back
                connection.execute(insert(defense_states).values(account_id=account_id, slot=slot, version=1,
                                                                 state=state, updated=now))
            except IntegrityError:
                raise StateConflict(slot) from None
        shown = figures.get(slot, {})
        connection.execute(insert(defense_events).values(
            account_id=account_id, slot=slot, created=now, images=images,
            **{key: _finite(shown.get(key)) for key in FIGURES}))


def _finite(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def issue(connection: Connection, account_id: int, challenge: Challenge, now: float | None = None) -> None:
    now = time.time() if now is None else now
    connection.execute(insert(pow_challenges).values(
        id=challenge.id, account_id=account_id, account=challenge.account, digest=challenge.digest,
        images=challenge.images, hashes=challenge.hashes, issued=now, expires=challenge.expires))


def challenge(connection: Connection, challenge_id: str) -> tuple[Challenge, int, float | None] | None:
    """(the challenge, its account's id, when it was spent or None), or None for an unknown id."""
    row = connection.execute(select(pow_challenges).where(pow_challenges.c.id == challenge_id)).mappings().first()
    if row is None:
        return None
    return (Challenge(row["id"], row["account"], row["digest"], row["images"], int(row["hashes"]), row["expires"]),
            row["account_id"], row["spent"])


def spend(connection: Connection, challenge_id: str, now: float | None = None) -> bool:
    """Mark the challenge spent unless it already is or has expired; True if this call spent it."""
    now = time.time() if now is None else now
    return connection.execute(
        update(pow_challenges)
        .where(pow_challenges.c.id == challenge_id, pow_challenges.c.spent.is_(None), pow_challenges.c.expires >= now)
        .values(spent=now)).rowcount == 1


def prune_challenges(connection: Connection, now: float | None = None, keep: float = 3600.0) -> int:
    """Drop challenges that expired more than `keep` seconds ago (spent or not: they can never be used)."""
    now = time.time() if now is None else now
    return connection.execute(pow_challenges.delete().where(pow_challenges.c.expires < now - keep)).rowcount


@dataclass
class AccountFigures:
    """What the account-aware defenses show of one account: the latest figures of each slot, and when a
    detection defense first flagged it."""

    latest: dict[str, dict[str, float | None]]
    flagged_at: float | None

    @property
    def coverage(self) -> float | None:
        """The coverage of the first defense (in the served order) that measures one: the defenses after it see
        features it may have changed."""
        return next((f["coverage"] for f in self.latest.values() if f.get("coverage") is not None), None)

    @property
    def flagged(self) -> bool:
        return any(f.get("flagged") for f in self.latest.values())


def figures_of(connection: Connection, account_ids: list[int] | None = None) -> dict[int, AccountFigures]:
    """Per account, its defenses' latest figures and the time of its first flag."""
    newest = (select(defense_events.c.account_id, defense_events.c.slot, func.max(defense_events.c.id).label("id"))
              .group_by(defense_events.c.account_id, defense_events.c.slot).subquery())
    # by id: a request writes its slots' rows in the order the defenses run, so `latest` keeps that order
    query = select(defense_events).join(newest, defense_events.c.id == newest.c.id).order_by(defense_events.c.id)
    if account_ids is not None:
        query = query.where(defense_events.c.account_id.in_(account_ids))
    out: dict[int, AccountFigures] = {}
    for row in connection.execute(query).mappings():
        entry = out.setdefault(row["account_id"], AccountFigures({}, None))
        entry.latest[row["slot"]] = {key: row[key] for key in FIGURES}
    flags = select(defense_events.c.account_id, func.min(defense_events.c.created)).where(
        defense_events.c.flagged == 1).group_by(defense_events.c.account_id)
    for account_id, first in connection.execute(flags):
        if account_id in out:
            out[account_id].flagged_at = first
    return out


def history(connection: Connection, account_id: int, limit: int = 2000) -> list[dict]:
    """The account's figures request by request (oldest first; the last `limit` rows)."""
    rows = connection.execute(select(defense_events).where(defense_events.c.account_id == account_id)
                              .order_by(defense_events.c.id.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in reversed(rows)]


def is_flagged(connection: Connection, account_id: int, slot: str) -> bool:
    row = connection.execute(select(defense_events.c.flagged).where(
        and_(defense_events.c.account_id == account_id, defense_events.c.slot == slot))
        .order_by(defense_events.c.id.desc()).limit(1)).first()
    return bool(row and row[0])
