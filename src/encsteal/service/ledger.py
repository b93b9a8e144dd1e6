"""Accounts and the per-request ledger of the embedding API, through SQLAlchemy (SQLite by default, WAL;
any SQLAlchemy URL such as postgresql://... for several server instances sharing one ledger).

When a query is billed: after the features of a request have been computed, in one transaction that adds
the request's images to the account's usage (only if they fit in its quota) and appends the ledger entry.
The response is sent after that commit. A request rejected for any reason (authentication, rate limit,
quota, malformed input, a failure while computing features) writes nothing and costs nothing.

A request carrying an `Idempotency-Key` header also stores the features it returned. If the connection
breaks after the commit, the client sends the same request with the same key again and receives the same
features without a second charge, so every ledger entry is eventually delivered.

API keys are 256-bit random tokens stored only as their SHA-256 (a slow password hash buys nothing against
keys of that entropy, and lookups stay one index probe). Rate limits follow GCRA, kept in the account row
and updated by compare-and-set, so every worker process and every instance enforces one shared limit.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from encsteal.errors import EncstealError


class LedgerError(EncstealError):
    pass


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Images this account may embed in total; None: unlimited."""
    price: Mapped[float] = mapped_column(Float, default=0.0)
    """Price of one query (one image), in the provider's currency."""
    rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Requests per second; None: unlimited."""
    burst: Mapped[int] = mapped_column(Integer, default=1)
    """Requests that may arrive at once before the rate applies."""
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    used: Mapped[int] = mapped_column(Integer, default=0)
    """Images billed so far (equals the sum of the account's ledger entries)."""
    spent: Mapped[float] = mapped_column(Float, default=0.0)
    tat: Mapped[float] = mapped_column(Float, default=0.0)
    """GCRA's theoretical arrival time of the next request (unix seconds)."""
    created: Mapped[float] = mapped_column(Float, default=time.time)


class LedgerEntry(Base):
    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("account_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the request's decoded pixels: a key reused for other images is refused."""
    images: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float] = mapped_column(Float)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    features: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """The float32 features returned (kept for replays of requests with an idempotency key)."""


def database_url(db: str | Path) -> str:
    """A path becomes an SQLite URL; anything with '://' is used as it is."""
    text = str(db)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser()}"


@dataclass
class Usage:
    name: str
    used: int
    quota: int | None
    spent: float
    price: float
    requests: int
    disabled: bool

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.used)


class QuotaExceeded(LedgerError):
    def __init__(self, used: int, quota: int, asked: int) -> None:
        super().__init__(f"quota exceeded: {used} of {quota} queries used, {asked} asked for, {quota - used} left")
        self.remaining = quota - used


class Ledger:
    def __init__(self, db: str | Path) -> None:
        url = database_url(db)
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise LedgerError(f"cannot open the account database {db}: {exc.orig}") from None

    # ---- accounts (the provider's side)

    def create_account(self, name: str, *, quota: int | None = None, price: float = 0.0,
                       rate: float | None = None, burst: int = 1) -> str:
        """A new account; returns its API key, which is shown once and stored only hashed."""
        if quota is not None and quota < 0 or price < 0 or (rate is not None and rate <= 0) or burst < 1:
            raise LedgerError("quota and price must be >= 0, rate > 0 and burst >= 1")
        key = "es_" + secrets.token_urlsafe(32)
        with Session(self.engine) as session, session.begin():
            session.add(Account(name=name, key_hash=hash_key(key), quota=quota, price=price, rate=rate, burst=burst))
            try:
                session.flush()
            except IntegrityError:
                raise LedgerError(f"an account named '{name}' already exists") from None
        return key

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        with Session(self.engine) as session, session.begin():
            result = session.execute(update(Account).where(Account.name == name).values(disabled=disabled))
            if result.rowcount == 0:
                raise LedgerError(f"no account named '{name}'")

    def usage(self, name: str | None = None) -> list[Usage]:
        with Session(self.engine) as session:
            counts = dict(session.execute(select(LedgerEntry.account_id, func.count()).group_by(LedgerEntry.account_id)).all())
            query = select(Account).order_by(Account.id)
            if name is not None:
                query = query.where(Account.name == name)
            accounts = session.scalars(query).all()
            if name is not None and not accounts:
                raise LedgerError(f"no account named '{name}'")
            return [Usage(a.name, a.used, a.quota, a.spent, a.price, counts.get(a.id, 0), a.disabled) for a in accounts]

    def entries(self, name: str) -> list[LedgerEntry]:
        with Session(self.engine) as session:
            account = session.scalar(select(Account).where(Account.name == name))
            if account is None:
                raise LedgerError(f"no account named '{name}'")
            return list(session.scalars(select(LedgerEntry).where(LedgerEntry.account_id == account.id).order_by(LedgerEntry.id)))

    # ---- serving (the API's side)

    def authenticate(self, key: str) -> Account | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalar(select(Account).where(Account.key_hash == hash_key(key)))

    def admit(self, account: Account, now: float | None = None) -> float | None:
        """Take one request from the account's rate; None if admitted, else the seconds to wait."""
        if account.rate is None:
            return None
        interval = 1.0 / account.rate
        tolerance = (account.burst - 1) * interval
        for _ in range(100):  # compare-and-set; another worker may have moved tat since we read it
            now = time.time() if now is None else now
            with Session(self.engine) as session, session.begin():
                tat = session.scalar(select(Account.tat).where(Account.id == account.id))
                start = max(tat, now)
                if start - now > tolerance:
                    return start - now - tolerance
                moved = session.execute(
                    update(Account).where(Account.id == account.id, Account.tat == tat).values(tat=start + interval)
                ).rowcount
            if moved:
                return None
            now = None
        raise LedgerError("rate limiter: too much contention on one account")

    def replay(self, account: Account, idempotency_key: str) -> LedgerEntry | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalar(select(LedgerEntry).where(
                LedgerEntry.account_id == account.id, LedgerEntry.idempotency_key == idempotency_key))

    def bill(self, account: Account, images: int, request_digest: str, idempotency_key: str | None,
             features: bytes | None) -> int | None:
        """Charge `images` queries and record them, atomically; returns the queries left in the quota (None:
        unlimited). Over the quota it raises QuotaExceeded and charges nothing."""
        cost = images * account.price
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            charged = session.execute(
                update(Account)
                .where(Account.id == account.id, (Account.quota.is_(None)) | (Account.used + images <= Account.quota))
                .values(used=Account.used + images, spent=Account.spent + cost)
            ).rowcount
            if not charged:
                used, quota = session.execute(select(Account.used, Account.quota).where(Account.id == account.id)).one()
                raise QuotaExceeded(used, quota, images)
            entry = LedgerEntry(account_id=account.id, idempotency_key=idempotency_key, request_digest=request_digest,
                                images=images, cost=cost, created=time.time(),
                                features=features if idempotency_key else None)
            session.add(entry)
            if account.quota is None:
                return None
            used = session.scalar(select(Account.used).where(Account.id == account.id))
            return max(0, account.quota - used)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL keeps every commit across a crash of the server process (what SIGKILL tests) and
    # skips an fsync per request, which would otherwise serialise the workers on the disk; a power cut may
    # lose the last commits. Deployments that need more use PostgreSQL.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
