"""The account-aware defenses' tables on a real SQLite file: compare-and-set of states, history, challenges spent
once; and the console page rendered from them."""

import pytest
from sqlalchemy import create_engine

from encsteal.defenses.proof_of_work import Challenge
from encsteal.service import account_states
from encsteal.service.account_states import StateConflict
from encsteal.service.console import ConsoleAccount, line_chart, render


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'states.sqlite'}")
    account_states.metadata.create_all(engine)
    return engine


def write(engine, account_id, read, states, coverage=1.0, flagged=0, images=4):
    figures = {slot: {"coverage": coverage, "queries": 4.0, "flagged": float(flagged)} for slot in states}
    with engine.begin() as connection:
        account_states.write_states(connection, account_id, read, states, figures, images)


def read(engine, account_id):
    with engine.connect() as connection:
        return account_states.read_states(connection, account_id)


def test_states_are_written_by_compare_and_set(engine):
    assert read(engine, 1) == {}
    write(engine, 1, {}, {"b4b": b"first"})
    first = read(engine, 1)
    assert first == {"b4b": (1, b"first")}
    with pytest.raises(StateConflict):  # a concurrent first request of the account inserted it already
        write(engine, 1, {}, {"b4b": b"lost"})
    write(engine, 1, first, {"b4b": b"second"})
    with pytest.raises(StateConflict):  # read at version 1, but another request moved it to 2
        write(engine, 1, first, {"b4b": b"stale"})
    assert read(engine, 1) == {"b4b": (2, b"second")}
    assert read(engine, 2) == {}  # another account's state is its own


def test_a_conflict_rolls_back_the_whole_request(engine):
    write(engine, 1, {}, {"b4b": b"a", "pow": b"a"})
    before = read(engine, 1)
    write(engine, 1, before, {"pow": b"moved"})  # another request moved only pow
    with pytest.raises(StateConflict):
        write(engine, 1, before, {"b4b": b"b", "pow": b"b"})
    assert read(engine, 1)["b4b"] == (1, b"a")  # b4b's update went with the failed transaction
    with engine.connect() as connection:
        assert len(account_states.history(connection, 1)) == 3  # 2 slots first, then pow alone


def test_figures_and_the_first_flag(engine):
    write(engine, 1, {}, {"detection": b"x"}, coverage=2.0)
    write(engine, 1, read(engine, 1), {"detection": b"y"}, coverage=5.0, flagged=1)
    write(engine, 1, read(engine, 1), {"detection": b"z"}, coverage=6.0, flagged=1)
    write(engine, 2, {}, {"detection": b"x"}, coverage=1.0)
    with engine.connect() as connection:
        shown = account_states.figures_of(connection)
        assert shown[1].coverage == 6.0 and shown[1].flagged and shown[1].flagged_at is not None
        assert not shown[2].flagged and shown[2].flagged_at is None
        history = account_states.history(connection, 1)
        assert [row["coverage"] for row in history] == [2.0, 5.0, 6.0]
        assert shown[1].flagged_at == history[1]["created"]


def test_a_challenge_is_spent_once_and_not_after_it_expired(engine):
    live = Challenge("c1", "alice", "d" * 64, 4, 100, expires=2000.0)
    old = Challenge("c2", "alice", "d" * 64, 4, 100, expires=1000.0)
    with engine.begin() as connection:
        account_states.issue(connection, 7, live, now=900.0)
        account_states.issue(connection, 7, old, now=900.0)
    with engine.begin() as connection:
        found, account_id, spent = account_states.challenge(connection, "c1")
        assert found == live and account_id == 7 and spent is None
        assert account_states.challenge(connection, "unknown") is None
        assert account_states.spend(connection, "c1", now=1500.0)
        assert not account_states.spend(connection, "c1", now=1500.0)
        assert not account_states.spend(connection, "c2", now=1500.0)  # expired
        assert account_states.challenge(connection, "c1")[2] == 1500.0
        assert account_states.prune_challenges(connection, now=1000.0 + 3601) == 1  # c2 is gone, c1 stays
        assert account_states.challenge(connection, "c1") is not None


def test_the_console_page_shows_every_account_and_marks_the_flagged():
    history = [{"slot": "b4b", "created": 100.0 + i, "images": 10, "queries": 10 * (i + 1), "coverage": 1.0 + i,
                "sigma": 0.01 * i, "prada_w": None, "hashes_per_image": None, "flagged": int(i >= 2)}
               for i in range(4)]
    accounts = [ConsoleAccount("stealer<script>", 40, None, 4, "0.04", "0.001", False, 4.0, True, 102.0, {}, history),
                ConsoleAccount("idle", 0, 100, 0, "0", "0.001", True, None, False, None, {}, [])]
    page = render(accounts, model="abc123", defenses="b4b:beta=9", now=200.0)
    assert page.count('class="account"') == 2 and "stealer&lt;script&gt;" in page and "<script>" not in page
    assert 'class="flagged">flagged<' in page and 'class="disabled">disabled<' in page
    assert page.count('class="chart"') == 3  # coverage, noise and usage (no proof-of-work here)
    assert "<circle" in page  # the flag marked on the coverage line
    assert "no data yet" in line_chart({}, title="t", x_label="x", y_label="y")
