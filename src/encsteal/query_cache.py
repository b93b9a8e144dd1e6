"""Paid features are never lost and never bought twice.

`QueryCache` is an SQLite file (by default in the run directory; runs against the same target may share
one, e.g. the budgets of a query-budget curve) mapping a digest of each image's bytes to the feature vector
the target returned, and recording which run was answered which image, so each run's query cost is known.
`CachedTarget` wraps any Target: it answers known images from the cache, buys only the missing ones, and
commits each request's features before buying the next, so a killed run loses at most the request in flight
and a resumed one re-buys nothing.

When the provider refuses the attacker (AccountRefused: a detection defense flagged it, with the policy
`refuse`), `CachedTarget` keeps what it has: it records the refusal (`refusal`), buys nothing more, and answers
the images it never bought with rows of NaN, which the attacks leave out (encsteal.target.answered).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import sqlite3
from pathlib import Path

import torch

from encsteal.defenses.accounts import AccountRefused
from encsteal.errors import EncstealError
from encsteal.progress import progress_bar
from encsteal.target import QueryError, Target, check_images


class QueryCacheError(EncstealError):
    pass


def image_digests(images: torch.Tensor) -> list[bytes]:
    """SHA-256 of each image's shape and pixels."""
    flat = images.contiguous().cpu()
    header = repr(tuple(images.shape[1:])).encode()
    return [hashlib.sha256(header + img.numpy().tobytes()).digest() for img in flat]


class QueryCache:
    """digest -> float32 feature vector, for one target (its identity is recorded and checked)."""

    def __init__(self, path: Path, target_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS features (digest BLOB PRIMARY KEY, feature BLOB NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS asked (run TEXT NOT NULL, digest BLOB NOT NULL, PRIMARY KEY (run, digest))")
            self.db.commit()
            row = self.db.execute("SELECT value FROM meta WHERE key = 'target'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise QueryCacheError(f"query cache {self.path} is not a readable SQLite file ({exc}); move it away") from None
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('target', ?)", (target_id,))
            self.db.commit()
        elif row[0] != target_id:
            raise QueryCacheError(
                f"query cache {self.path} holds features bought from another target ({row[0]}, not {target_id}); "
                "use a new run directory for a new target"
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def get_many(self, digests: list[bytes]) -> dict[bytes, torch.Tensor]:
        found: dict[bytes, torch.Tensor] = {}
        for start in range(0, len(digests), 500):  # SQLite limits the number of bound parameters
            chunk = digests[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for digest, blob in self.db.execute(f"SELECT digest, feature FROM features WHERE digest IN ({marks})", chunk):
                found[digest] = torch.frombuffer(bytearray(blob), dtype=torch.float32)
        return found

    def put_many(self, digests: list[bytes], features: torch.Tensor) -> None:
        rows = [(d, f.numpy().tobytes()) for d, f in zip(digests, features.contiguous().float())]
        with self.db:  # one transaction: all of a request's features, or none
            self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)", rows)

    def record_asked(self, run: str, digests: list[bytes]) -> None:
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO asked VALUES (?, ?)", [(run, d) for d in set(digests)])

    def asked(self, run: str) -> int:
        """Distinct images `run` has asked the target for: its query cost, whoever paid for them first."""
        return self.db.execute("SELECT COUNT(*) FROM asked WHERE run = ?", (run,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()


class CachedTarget:
    """A Target that answers from a QueryCache and buys only what it has never bought.

    `queries` counts images bought from the wrapped target by this object; `reused` counts images answered
    from the cache; `cache.asked(run)` counts the distinct images run `run` was ever answered. After a refusal,
    `refusal` says when and after how many images it came, and `unanswered` counts the images answered with NaN."""

    def __init__(self, target: Target, cache: QueryCache, *, run: str = "run", batch_size: int = 256,
                 progress: bool = True) -> None:
        self.target = target
        self.cache = cache
        self.run = run
        self.batch_size = batch_size
        self.progress = progress
        self.queries = 0
        self.reused = 0
        self.refusal: dict | None = None
        """{account, account_images, images, at, message}: the refused account and the images it had been answered,
        the images this run had been answered in all (cache.asked), the time (UTC, ISO 8601) and the provider's
        sentence; None: not refused."""
        self.unanswered: set[bytes] = set()
        self.feature_dim: int | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        digests = image_digests(images)
        known = self.cache.get_many(list(set(digests)))
        self.cache.record_asked(self.run, [digest for digest in digests if digest in known])
        missing: dict[bytes, int] = {}
        for index, digest in enumerate(digests):
            if digest not in known and digest not in missing:
                missing[digest] = index
        self.reused += len(digests) - len(missing)
        order = list(missing.items()) if self.refusal is None else []
        show = self.progress and len(order) > self.batch_size
        with progress_bar(len(order), "querying target", enabled=show) as advance:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                try:
                    features = self.target.embed(images[[index for _, index in chunk]])
                except AccountRefused as refusal:
                    self._refused(refusal)
                    break
                if features.ndim != 2 or len(features) != len(chunk) or not torch.isfinite(features).all():
                    # never store (or pay twice for) an answer that is not one finite vector per image
                    raise QueryError(
                        f"the target answered {len(chunk)} images with features of shape {tuple(features.shape)}"
                        + ("" if torch.isfinite(features).all() else " containing NaN or infinite values")
                    )
                chunk_digests = [digest for digest, _ in chunk]
                self.cache.put_many(chunk_digests, features)
                self.cache.record_asked(self.run, chunk_digests)
                known.update(zip(chunk_digests, features))
                self.queries += len(chunk)
                advance(len(chunk))
        if known:
            self.feature_dim = len(next(iter(known.values())))
        unanswered = [digest for digest in missing if digest not in known]
        if unanswered and self.feature_dim is None:
            raise AccountRefused(f"the provider refused the attacker before it had a single answer: "
                                 f"{self.refusal['message']}", self.refusal["account"], self.refusal["account_images"])
        self.unanswered.update(unanswered)
        refused = torch.full((self.feature_dim or 0,), math.nan)
        return torch.stack([known.get(digest, refused) for digest in digests])

    def _refused(self, refusal: AccountRefused) -> None:
        self.refusal = {"account": refusal.account, "account_images": refusal.images,
                        "images": self.cache.asked(self.run),
                        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "message": str(refusal)}
