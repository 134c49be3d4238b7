"""The store's time budget per query (gateway.query.deadline): the watchdog calls what is due and nothing
else, a DuckDB connection held past the budget is interrupted and stays usable, and PostgreSQL cancels a
statement past it; either way the refusal's reason says so without the statement."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from gateway.query.deadline import WATCHDOG, Watchdog, timed_out
from gateway.query.execute import single_thread_engine, store_engine, store_failure

ENDLESS = "SELECT count(*) FROM range(3000000000) a WHERE a % 7 = 3"
"""A statement DuckDB takes 20 s or more over here: far past the budget the tests set."""


def test_the_watchdog_calls_a_due_action_until_disarmed_and_never_a_disarmed_one() -> None:
    watchdog = Watchdog()
    fired: list[str] = []
    done = threading.Event()
    due = watchdog.arm(0.2, lambda: (fired.append("due"), done.set()))
    kept = watchdog.arm(0.2, lambda: fired.append("disarmed"))
    watchdog.arm(60, lambda: fired.append("later"))
    watchdog.disarm(kept)
    started = time.monotonic()
    assert done.wait(5)
    assert time.monotonic() - started >= 0.2 - 0.01
    time.sleep(0.3)  # a few more looks: the due action is called again, the disarmed one never
    watchdog.disarm(due)
    calls = len(fired)
    time.sleep(0.2)
    assert set(fired) == {"due"} and calls >= 2 and len(fired) == calls


def test_a_failing_action_does_not_stop_the_watchdog() -> None:
    watchdog = Watchdog()
    done = threading.Event()
    failing = watchdog.arm(0.05, lambda: 1 / 0)
    later = watchdog.arm(0.1, done.set)
    assert done.wait(5)
    watchdog.disarm(failing)
    watchdog.disarm(later)


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = tmp_path / "store.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE t AS SELECT range AS a FROM range(1000)")
    return f"duckdb:///{path}"


@pytest.mark.parametrize("engine_of", [store_engine, single_thread_engine], ids=["store", "one_thread"])
def test_a_duckdb_connection_held_past_the_budget_is_interrupted_and_serves_the_next_query(
    store: str, engine_of: object
) -> None:
    engine = engine_of(store, timeout_s=0.3)  # type: ignore[operator]
    assert engine is not None
    started = time.monotonic()
    with pytest.raises(sa.exc.DBAPIError) as stopped, engine.connect() as conn:
        conn.execute(sa.text(ENDLESS)).all()
    assert time.monotonic() - started < 10
    assert timed_out(stopped.value)
    reason = store_failure(stopped.value)
    assert "time limit" in reason and "range" not in reason
    # Interrupted once: the pool's connection (the same one) runs the next query to its end.
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1000
    engine.dispose()


def test_a_deadline_that_passes_between_two_statements_stops_the_next_one(store: str) -> None:
    """The interrupt at the deadline finds nothing running (DuckDB then ignores it): the query's next
    statement is interrupted all the same."""
    engine = store_engine(store, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(sa.exc.DBAPIError) as stopped, engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1000
        time.sleep(1.0)  # the query's own work between statements, past its deadline
        conn.execute(sa.text(ENDLESS)).all()
    assert time.monotonic() - started < 10
    assert timed_out(stopped.value)
    engine.dispose()


def test_without_a_budget_nothing_is_interrupted(store: str) -> None:
    engine = store_engine(store)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM range(30000000) a WHERE a % 7 = 3")).scalar()
    assert rows == 4285714
    engine.dispose()


def test_a_connection_given_back_leaves_nothing_armed(store: str) -> None:
    """Each query arms the watchdog when it takes a connection and disarms it when it gives it back:
    however many queries a gateway answers, the watchdog holds only the connections in use."""
    engine = store_engine(store, timeout_s=60)
    before = len(WATCHDOG)
    with engine.connect() as conn:
        assert len(WATCHDOG) == before + 1
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1000
    for _ in range(50):
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).all()
    assert len(WATCHDOG) == before
    engine.dispose()


def test_an_unrelated_store_error_is_not_taken_for_a_timeout(store: str) -> None:
    engine = store_engine(store, timeout_s=5)
    with pytest.raises(sa.exc.DBAPIError) as failed, engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table")).all()
    assert not timed_out(failed.value)
    engine.dispose()


@pytest.mark.postgres
def test_postgresql_cancels_a_statement_past_the_budget(pg_url: str) -> None:
    engine = store_engine(pg_url, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(sa.exc.DBAPIError) as stopped, engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_sleep(30)")).all()
    assert time.monotonic() - started < 10
    assert timed_out(stopped.value) and "time limit" in store_failure(stopped.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "300ms"
    engine.dispose()
