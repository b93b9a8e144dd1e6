"""Accounts and the per-request ledger of the embedding API, through SQLAlchemy (SQLite by default, WAL;
PostgreSQL, as postgresql://user:password@host/db, for several server instances sharing one ledger).

When a query is billed: after the features of a request have been computed, in one transaction that adds
the request's images to the account's usage (only if they fit in its quota) and appends the ledger entry.
The response is sent after that commit. A request rejected for any reason (authentication, rate limit,
quota, malformed input, a failure while computing features) writes nothing and costs nothing.

Money is held as integers of micro-units (10^-6 of the provider's currency): prices, the cost of every
entry and each account's spending are exact, so a thousand queries at 0.001 cost exactly 1. A price finer
than a micro-unit is refused. `money(micros)` gives the exact Decimal and `format_money` its text.

Replays: a request carrying an `Idempotency-Key` header also stores the features it returned, keyed by
the account, the model that answered (`model_id`: weights and defenses) and the key. If the connection
breaks after the commit, the client sends the same request with the same key again and receives the same
features without a second charge. The same key sent to another model (the server was restarted with
another checkpoint or other defenses) is no replay: that model's features are computed and billed.
Stored replays are not kept forever: `prune` drops those older than an age and, oldest first, those
beyond a total size (the server does so as it runs; `encsteal accounts prune` does it by hand). The
ledger entry itself, the billing record, is kept; only its features and key are dropped, so a request
repeated after its replay expired is computed and billed again.

The account-aware defenses keep their per-account states, the history of their figures and the proof-of-work
challenges in tables of the same database (encsteal.service.account_states); a request's new states are
written in its billing transaction (`bill(..., within=...)`).

API keys are 256-bit random tokens stored only as their SHA-256 (a slow password hash buys nothing against
keys of that entropy, and lookups stay one index probe). Rate limits follow GCRA, kept in the account row
and updated by compare-and-set, so every worker process and every instance enforces one shared limit.

Databases written before money was exact (float columns `price`, `spent`, `cost`, table `ledger`) are
migrated in place when first opened: amounts are rounded to micro-units, every ledger entry is kept, and
the replays stored then are dropped (they do not record which model answered them).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Connection,
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
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from encsteal.errors import EncstealError
from encsteal.service import account_states

MICROS = 1_000_000
"""Micro-units in one unit of the provider's currency."""


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
    price_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    """Price of one query (one image), in micro-units of the provider's currency."""
    rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Requests per second; None: unlimited."""
    burst: Mapped[int] = mapped_column(Integer, default=1)
    """Requests that may arrive at once before the rate applies."""
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    used: Mapped[int] = mapped_column(Integer, default=0)
    """Images billed so far (equals the sum of the account's ledger entries)."""
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    """Money billed so far, in micro-units (equals the sum of the entries' costs)."""
    tat: Mapped[float] = mapped_column(Float, default=0.0)
    """GCRA's theoretical arrival time of the next request (unix seconds)."""
    created: Mapped[float] = mapped_column(Float, default=time.time)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("account_id", "model_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The model (weights and defenses) that answered; None for entries migrated from an older database."""
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The client's key while the replay is stored; None once it expired (or without a key)."""
    request_digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the request's decoded pixels: a key reused for other images is refused."""
    images: Mapped[int] = mapped_column(Integer)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    features: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """The float32 features returned, kept for replays while the key is (see `prune`)."""


def database_url(db: str | Path) -> str:
    """A path becomes an SQLite URL; postgresql:// (or postgres://) uses the psycopg driver; any other
    SQLAlchemy URL is used as it is."""
    text_ = str(db)
    if "://" not in text_:
        return f"sqlite:///{Path(text_).expanduser()}"
    scheme, rest = text_.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else text_


def to_micros(amount: Decimal | str | int | float) -> int:
    """An amount of money -> integer micro-units, exactly; negative amounts and amounts finer than a
    micro-unit are refused. A float is read as its shortest decimal text (0.001 is 1000 micro-units)."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise LedgerError(f"'{amount}' is not an amount of money") from None
    if not value.is_finite() or value < 0:
        raise LedgerError(f"an amount of money must be a finite number >= 0, got {amount}")
    micros = value * MICROS
    if micros != micros.to_integral_value():
        raise LedgerError(f"{amount} is finer than a millionth of the currency; round it to 6 decimals")
    return int(micros)


def money(micros: int) -> Decimal:
    """Micro-units -> the exact amount (Decimal division is exact here: 992000 -> Decimal('0.992'))."""
    return Decimal(micros) / MICROS


def format_money(micros: int) -> str:
    """Micro-units -> the exact amount as text, without trailing zeros: 992000 -> '0.992', 10**7 -> '10'."""
    whole, fraction = divmod(micros, MICROS)
    return str(whole) if not fraction else f"{whole}.{fraction:06d}".rstrip("0")


@dataclass
class Usage:
    name: str
    used: int
    quota: int | None
    spent_micros: int
    price_micros: int
    requests: int
    disabled: bool

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.used)

    @property
    def spent(self) -> Decimal:
        return money(self.spent_micros)

    @property
    def price(self) -> Decimal:
        return money(self.price_micros)


@dataclass
class Pruned:
    replays: int
    """Stored replays dropped."""
    bytes: int
    """Bytes of features they held."""


class QuotaExceeded(LedgerError):
    def __init__(self, used: int, quota: int, asked: int) -> None:
        super().__init__(f"quota exceeded: {used} of {quota} queries used, {asked} asked for, {max(0, quota - used)} left")
        self.remaining = max(0, quota - used)


class Ledger:
    def __init__(self, db: str | Path) -> None:
        url = database_url(db)
        sqlite = url.startswith("sqlite")
        try:
            self.engine = create_engine(url, connect_args={"timeout": 30} if sqlite else {})
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise LedgerError(f"cannot use the account database {masked_url(db)}: "
                              + str(exc).replace(str(db), masked_url(db))) from None
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _migrate_float_money(self.engine)
            Base.metadata.create_all(self.engine)
            account_states.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the account database {masked_url(db)}: {getattr(exc, 'orig', None) or exc}") from None

    # ---- accounts (the provider's side)

    def create_account(self, name: str, *, quota: int | None = None, price: Decimal | str | int | float = 0,
                       rate: float | None = None, burst: int = 1) -> str:
        """A new account; returns its API key, which is shown once and stored only hashed."""
        price_micros = to_micros(price)
        if quota is not None and quota < 0 or (rate is not None and rate <= 0) or burst < 1:
            raise LedgerError("quota must be >= 0, rate > 0 and burst >= 1")
        key = "es_" + secrets.token_urlsafe(32)
        with Session(self.engine) as session, session.begin():
            session.add(Account(name=name, key_hash=hash_key(key), quota=quota, price_micros=price_micros, rate=rate,
                                burst=burst))
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
            return [Usage(a.name, a.used, a.quota, a.spent_micros, a.price_micros, counts.get(a.id, 0), a.disabled)
                    for a in accounts]

    def defense_figures(self) -> dict[str, account_states.AccountFigures]:
        """Per account name, what its account-aware defenses show (coverage, flags); accounts never answered by
        such a defense are left out."""
        with Session(self.engine) as session:
            names = dict(session.execute(select(Account.id, Account.name)).all())
            figures = account_states.figures_of(session.connection())
        return {names[account_id]: entry for account_id, entry in figures.items() if account_id in names}

    def defense_history(self, name: str) -> list[dict]:
        with Session(self.engine) as session:
            account_id = session.scalar(select(Account.id).where(Account.name == name))
            if account_id is None:
                raise LedgerError(f"no account named '{name}'")
            return account_states.history(session.connection(), account_id)

    def entries(self, name: str) -> list[LedgerEntry]:
        with Session(self.engine) as session:
            account = session.scalar(select(Account).where(Account.name == name))
            if account is None:
                raise LedgerError(f"no account named '{name}'")
            return list(session.scalars(select(LedgerEntry).where(LedgerEntry.account_id == account.id).order_by(LedgerEntry.id)))

    def replay_bytes(self) -> int:
        """Bytes of features held for replays."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.coalesce(func.sum(func.length(LedgerEntry.features)), 0))))

    def prune(self, *, max_age: float | None = None, max_bytes: int | None = None, now: float | None = None) -> Pruned:
        """Drop the stored replays older than `max_age` seconds, then the oldest until those left hold at
        most `max_bytes` bytes of features. Ledger entries stay (they are the billing record); a request
        repeated after its replay was dropped is computed and billed again."""
        now = time.time() if now is None else now
        stored = LedgerEntry.idempotency_key.is_not(None)
        doomed = []
        if max_age is not None:
            doomed.append(select(LedgerEntry.id).where(stored, LedgerEntry.created < now - max_age))
        if max_bytes is not None:
            # newest first: the running total of the bytes of this entry and every newer one
            newer = func.sum(func.length(LedgerEntry.features)).over(order_by=LedgerEntry.id.desc())
            ranked = select(LedgerEntry.id, newer.label("newer")).where(stored).subquery()
            doomed.append(select(ranked.c.id).where(ranked.c.newer > max_bytes))
        pruned = Pruned(0, 0)
        with Session(self.engine) as session, session.begin():
            for ids in doomed:
                dropped = session.execute(select(func.count(), func.coalesce(func.sum(func.length(LedgerEntry.features)), 0))
                                          .where(LedgerEntry.id.in_(ids))).one()
                session.execute(update(LedgerEntry).where(LedgerEntry.id.in_(ids))
                                .values(features=None, idempotency_key=None).execution_options(synchronize_session=False))
                pruned = Pruned(pruned.replays + int(dropped[0]), pruned.bytes + int(dropped[1]))
        return pruned

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

    def theoretical_arrival(self, account: Account) -> float:
        """GCRA's theoretical arrival time of the account's next request (unix seconds): what its rate-limit
        headers are computed from."""
        with Session(self.engine) as session:
            return float(session.scalar(select(Account.tat).where(Account.id == account.id)))

    def replay(self, account: Account, model_id: str, idempotency_key: str, *, max_age: float | None = None,
               now: float | None = None) -> LedgerEntry | None:
        """The stored answer to this account's request with this key from this model, if any. An answer
        older than `max_age` seconds is dropped here (as `prune` would) and None returned."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            entry = session.scalar(select(LedgerEntry).where(
                LedgerEntry.account_id == account.id, LedgerEntry.model_id == model_id,
                LedgerEntry.idempotency_key == idempotency_key))
            if entry is not None and max_age is not None and entry.created < (time.time() if now is None else now) - max_age:
                entry.features, entry.idempotency_key = None, None
                return None
            return entry

    def bill(self, account: Account, images: int, request_digest: str, model_id: str, idempotency_key: str | None,
             features: bytes | None, within: Callable[[Connection], None] | None = None) -> int | None:
        """Charge `images` queries and record them, atomically; returns the queries left in the quota (None:
        unlimited). Over the quota it raises QuotaExceeded and charges nothing. The features are stored
        for replays when the request has an idempotency key. `within(connection)` runs in the same
        transaction (the account-aware defenses store the account's new states); whatever it raises rolls
        the whole request back."""
        cost = images * account.price_micros
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            charged = session.execute(
                update(Account)
                .where(Account.id == account.id, (Account.quota.is_(None)) | (Account.used + images <= Account.quota))
                .values(used=Account.used + images, spent_micros=Account.spent_micros + cost)
            ).rowcount
            if not charged:
                used, quota = session.execute(select(Account.used, Account.quota).where(Account.id == account.id)).one()
                raise QuotaExceeded(used, quota, images)
            session.add(LedgerEntry(account_id=account.id, model_id=model_id, idempotency_key=idempotency_key,
                                    request_digest=request_digest, images=images, cost_micros=cost, created=time.time(),
                                    features=features if idempotency_key else None))
            if within is not None:
                within(session.connection())
            if account.quota is None:
                return None
            used = session.scalar(select(Account.used).where(Account.id == account.id))
            return max(0, account.quota - used)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def masked_url(db: str | Path) -> str:
    """The database as it may be printed: a file path as it is, a URL with its password replaced by ***."""
    text_ = str(db)
    if "://" not in text_:
        return text_
    try:
        return make_url(text_).render_as_string(hide_password=True)
    except ArgumentError:
        return "the database URL given"  # unparsable: it may still hold a password


def _float_money(inspector) -> bool:
    """Whether the database holds accounts written with float money."""
    return "accounts" in inspector.get_table_names() and \
        "price_micros" not in {column["name"] for column in inspector.get_columns("accounts")}


def _migrate_float_money(engine) -> None:
    """Bring a database written with float money (accounts.price/spent, table `ledger`) to micro-units, in
    one transaction: amounts rounded to micro-units, ledger entries copied to `ledger_entries` without the
    replays they stored (those do not say which model answered), the old table dropped."""
    if not _float_money(inspect(engine)):
        return
    with engine.connect() as connection:
        # hold the database (SQLite) or the table (PostgreSQL) so that a second process opening it at the
        # same moment waits, then finds it migrated
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # DDL inside the transaction too
        else:
            connection.execute(text("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"))
        inspector = inspect(connection)
        if not _float_money(inspector):
            connection.rollback()
            return
        for column in ("price_micros", "spent_micros"):
            connection.execute(text(f"ALTER TABLE accounts ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0"))
        connection.execute(text("UPDATE accounts SET price_micros = CAST(ROUND(price * 1000000) AS BIGINT), "
                                "spent_micros = CAST(ROUND(spent * 1000000) AS BIGINT)"))
        connection.execute(text("ALTER TABLE accounts DROP COLUMN price"))
        connection.execute(text("ALTER TABLE accounts DROP COLUMN spent"))
        LedgerEntry.__table__.create(connection)
        if "ledger" in inspector.get_table_names():
            connection.execute(text(
                "INSERT INTO ledger_entries (id, account_id, model_id, idempotency_key, request_digest, images, "
                "cost_micros, created, features) SELECT id, account_id, NULL, NULL, request_digest, images, "
                "CAST(ROUND(cost * 1000000) AS BIGINT), created, NULL FROM ledger"))
            connection.execute(text("DROP TABLE ledger"))
            if engine.dialect.name == "postgresql":  # ids were copied: the new sequence continues after them
                connection.execute(text("SELECT setval(pg_get_serial_sequence('ledger_entries', 'id'), "
                                        "COALESCE((SELECT MAX(id) FROM ledger_entries), 0) + 1, false)"))
        connection.commit()


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL keeps every commit across a crash of the server process (what SIGKILL tests) and
    # skips an fsync per request, which would otherwise serialise the workers on the disk; a power cut may
    # lose the last commits. Deployments that need more use PostgreSQL.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
