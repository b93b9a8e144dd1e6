"""The ledger on its own, on SQLite and on a real PostgreSQL server: exact money, replays keyed by the model
that answered, their retention, and databases written before money was exact."""

import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import Boolean, Float, ForeignKey, Integer, LargeBinary, String, UniqueConstraint, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from encsteal.service.ledger import (
    Ledger,
    LedgerError,
    QuotaExceeded,
    database_url,
    format_money,
    hash_key,
    masked_url,
    money,
    to_micros,
)


def account(ledger: Ledger, name: str, **options):
    key = ledger.create_account(name, **options)
    return ledger.authenticate(key)


def test_money_is_exact(database):
    ledger = Ledger(database)
    buyer = account(ledger, "buyer", quota=1000, price="0.001")
    for _ in range(992):  # the run that once reported 0.9920000000000008
        ledger.bill(buyer, 1, "d", "model", None, None)
    (usage,) = ledger.usage("buyer")
    assert usage.spent_micros == 992_000 and usage.spent == Decimal("0.992") and format_money(usage.spent_micros) == "0.992"
    assert sum(entry.cost_micros for entry in ledger.entries("buyer")) == usage.spent_micros
    assert usage.price == Decimal("0.001")


@pytest.mark.parametrize("amount,micros", [(0, 0), ("0.001", 1000), (0.001, 1000), (0.1, 100_000), ("12.5", 12_500_000),
                                           (Decimal("0.000001"), 1)])
def test_amounts_become_micro_units(amount, micros):
    assert to_micros(amount) == micros
    assert money(micros) == Decimal(str(amount))


@pytest.mark.parametrize("amount", ["0.0000001", -1, "abc", "nan", float("inf")])
def test_bad_amounts_are_refused(amount):
    with pytest.raises(LedgerError):
        to_micros(amount)


def test_format_money():
    assert [format_money(m) for m in (0, 1, 992_000, 10**7, 12_500_000)] == ["0", "0.000001", "0.992", "10", "12.5"]


def test_replays_are_keyed_by_the_model(database):
    ledger = Ledger(database)
    buyer = account(ledger, "buyer", price=1)
    ledger.bill(buyer, 2, "digest", "model-a", "key-1", b"a" * 8)
    assert ledger.replay(buyer, "model-a", "key-1").features == b"a" * 8
    assert ledger.replay(buyer, "model-b", "key-1") is None  # another model: no replay
    ledger.bill(buyer, 2, "digest", "model-b", "key-1", b"b" * 8)  # the same key, billed for the other model
    assert ledger.replay(buyer, "model-b", "key-1").features == b"b" * 8
    assert ledger.usage("buyer")[0].used == 4


def test_replays_expire_by_age_and_size(database):
    ledger = Ledger(database)
    buyer = account(ledger, "buyer")
    now = time.time()
    for index in range(5):
        ledger.bill(buyer, 1, f"d{index}", "m", f"key-{index}", bytes(100))
    assert ledger.replay_bytes() == 500
    # by size: the oldest go first, until what is left fits
    pruned = ledger.prune(max_bytes=250)
    assert (pruned.replays, pruned.bytes) == (3, 300) and ledger.replay_bytes() == 200
    assert [ledger.replay(buyer, "m", f"key-{i}") is not None for i in range(5)] == [False] * 3 + [True] * 2
    # by age
    assert ledger.prune(max_age=3600, now=now).replays == 0
    assert ledger.prune(max_age=3600, now=now + 7200).replays == 2 and ledger.replay_bytes() == 0
    # the billing records stay, and a dropped key can be billed again
    assert len(ledger.entries("buyer")) == 5
    ledger.bill(buyer, 1, "d0", "m", "key-0", bytes(100))
    assert ledger.usage("buyer")[0].used == 6


def test_an_expired_replay_is_dropped_when_asked_for(database):
    ledger = Ledger(database)
    buyer = account(ledger, "buyer")
    ledger.bill(buyer, 1, "d", "m", "key", bytes(4))
    assert ledger.replay(buyer, "m", "key", max_age=60) is not None
    assert ledger.replay(buyer, "m", "key", max_age=60, now=time.time() + 61) is None
    assert ledger.replay(buyer, "m", "key") is None and ledger.replay_bytes() == 0


def test_concurrent_billing_never_passes_the_quota(database):
    ledger = Ledger(database)
    buyer = account(ledger, "buyer", quota=50, price="0.01")
    delivered = []

    def buy() -> None:
        for _ in range(20):
            try:
                ledger.bill(buyer, 3, "d", "m", None, None)
                delivered.append(3)
            except QuotaExceeded:
                return

    threads = [threading.Thread(target=buy) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (usage,) = ledger.usage("buyer")
    assert usage.used == sum(delivered) == 48 and usage.spent_micros == 48 * 10_000


# ---- a database written before money was exact, with the schema of that time


class OldBase(DeclarativeBase):
    pass


class OldAccount(OldBase):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    price: Mapped[float] = mapped_column(Float, default=0.0)
    rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    burst: Mapped[int] = mapped_column(Integer, default=1)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    used: Mapped[int] = mapped_column(Integer, default=0)
    spent: Mapped[float] = mapped_column(Float, default=0.0)
    tat: Mapped[float] = mapped_column(Float, default=0.0)
    created: Mapped[float] = mapped_column(Float, default=time.time)


class OldEntry(OldBase):
    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("account_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    images: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float] = mapped_column(Float)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    features: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


def test_a_database_with_float_money_is_migrated(database):
    engine = create_engine(database_url(database))
    OldBase.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add(OldAccount(id=1, name="old", key_hash=hash_key("es_old"), quota=2000, price=0.001, used=992,
                               spent=0.9920000000000008))
        session.add_all([OldEntry(id=i + 1, account_id=1, idempotency_key=f"k{i}", request_digest="d", images=1,
                                  cost=0.001, features=bytes(8)) for i in range(992)])
    engine.dispose()

    ledger = Ledger(database)
    (usage,) = ledger.usage("old")
    assert (usage.used, usage.spent_micros, usage.price_micros, usage.requests) == (992, 992_000, 1000, 992)
    assert {entry.cost_micros for entry in ledger.entries("old")} == {1000}
    old = ledger.authenticate("es_old")
    assert old is not None and ledger.replay(old, "any-model", "k0") is None  # replays of unknown models are dropped
    assert ledger.replay_bytes() == 0
    ledger.bill(old, 8, "d", "m", "k0", bytes(8))  # new entries follow the copied ones
    assert ledger.entries("old")[-1].id == 993 and ledger.usage("old")[0].spent_micros == 1_000_000
    Ledger(database)  # opening it again changes nothing
    assert ledger.usage("old")[0].spent_micros == 1_000_000


def test_database_urls_and_masking():
    assert database_url("a/b.sqlite").startswith("sqlite:///")
    assert database_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert masked_url("postgresql://user:s3cret@host:5432/db") == "postgresql://user:***@host:5432/db"
    assert masked_url("eaas.sqlite") == "eaas.sqlite"


def test_an_unreachable_database_is_one_clear_error():
    with pytest.raises(LedgerError, match=r"cannot open the account database postgresql://u:\*\*\*@127.0.0.1:9/x") as error:
        Ledger("postgresql://u:s3cret@127.0.0.1:9/x")
    assert "s3cret" not in str(error.value)
