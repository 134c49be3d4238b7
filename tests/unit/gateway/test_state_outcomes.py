"""How requests ended, as the steward's activity summary reports them."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from state_checks import another_worker_holding_the_turn

from gateway.state import GatewayState, outcomes

SINCE = "2000-01-01T00:00:00Z"


def _ended(state: GatewayState, request_id: str, subject: str, outcome: Any, **details: Any) -> None:
    state.record_outcome(
        request_id, subject=subject, org="org-a", agreement="DSA-1", dataset="cohort", kind="count",
        outcome=outcome, **details,
    )  # fmt: skip


def test_a_request_counts_once_with_the_outcome_it_ended_with(state: GatewayState) -> None:
    _ended(state, "r1", "alice", "pending_approval")
    _ended(state, "r1", "alice", "released", cells=4, suppressed=1)  # approved later: the same request
    _ended(state, "r2", "alice", "released", cells=4, suppressed=2)
    _ended(state, "r3", "bob", "refused", stage="disclosure")
    rows = {r["outcome"]: r for r in state.activity(SINCE)["by_agreement"]}
    assert set(rows) == {"released", "refused"}
    assert (rows["released"]["requests"], rows["released"]["suppressed_cells"]) == (2, 3)
    assert rows["refused"]["requests"] == 1


def test_researchers_with_refusals_are_listed_most_refused_first(state: GatewayState) -> None:
    for i in range(3):
        _ended(state, f"b{i}", "bob", "refused", stage="limit")
    _ended(state, "a0", "alice", "refused", stage="decide")
    _ended(state, "a1", "alice", "released", cells=1, suppressed=0)
    refused = state.activity(SINCE)["most_refused"]
    assert [(r["subject"], r["refused"]) for r in refused] == [("bob", 3), ("alice", 1)]


def test_the_summary_starts_at_the_time_asked(state: GatewayState) -> None:
    _ended(state, "r1", "alice", "released", cells=1, suppressed=0)
    assert state.activity("2999-01-01T00:00:00Z")["by_agreement"] == []


def _stored(state_url: str) -> dict[str, str]:
    """The outcomes on disk, read without the writer's process-local queue."""
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(outcomes.c.request_id, outcomes.c.outcome)).all())
    finally:
        engine.dispose()


def test_outcomes_reach_the_database_without_anyone_asking_for_the_summary(state_url: str) -> None:
    state = GatewayState(state_url)
    try:
        _ended(state, "r1", "alice", "released", cells=1, suppressed=0)
        deadline = time.monotonic() + 5
        while _stored(state_url) != {"r1": "released"}:
            assert time.monotonic() < deadline, "the outcome was never written"
            time.sleep(0.02)
    finally:
        state.close()


def test_close_stores_every_outcome_still_waiting_the_later_of_one_request_winning(state_url: str) -> None:
    state = GatewayState(state_url)
    for i in range(300):
        _ended(state, f"r{i}", "alice", "released", cells=1, suppressed=0)
    _ended(state, "r7", "alice", "refused", stage="execute")  # a failed commit's refusal replaces its release
    state.close()
    stored = _stored(state_url)
    assert len(stored) == 300
    assert stored["r7"] == "refused" and stored["r8"] == "released"
    with pytest.raises(RuntimeError, match="closed"):
        _ended(state, "late", "alice", "released", cells=1, suppressed=0)


def test_outcomes_are_stored_in_statements_of_many_rows_without_the_writers_turn(tmp_path: Path) -> None:
    # On a SQLite file, a batch goes in as statements of up to 90 rows, each committed on its own: another
    # worker holding the writers' turn (the flock beside the file) does not hold them up.
    statements: list[str] = []
    with another_worker_holding_the_turn(tmp_path) as (state, _):
        counting = state._counting
        assert counting is not None
        for i in range(200):
            _ended(state, f"r{i}", "alice", "released", cells=i, suppressed=0)
        _ended(state, "r3", "alice", "refused", stage="execute")

        def flush() -> None:
            counting.connection().set_trace_callback(statements.append)
            state.flush_outcomes()

        flushing = threading.Thread(target=flush)
        flushing.start()
        flushing.join(5)
        assert not flushing.is_alive()
        # 200 outcomes: statements of 90, 90 and 20
        assert [s.split(" (")[0] for s in statements] == ["INSERT INTO outcomes"] * 3
        stored = _stored(f"sqlite:///{tmp_path / 'state.db'}")
        assert len(stored) == 200 and stored["r3"] == "refused" and stored["r4"] == "released"


def test_outcomes_wait_and_are_stored_later_while_the_database_refuses_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    state = GatewayState(url)
    blocker = sqlite3.connect(tmp_path / "state.db", timeout=0, isolation_level=None)
    blocker.execute("PRAGMA busy_timeout=0")
    state._engine.dispose()  # new connections: a short busy timeout, so the blocked write fails quickly
    sa.event.listen(state._engine, "connect", lambda c, _r: c.execute("PRAGMA busy_timeout=50"))
    assert state._counting is not None  # and so for this thread's own connection, which writes outcomes
    state._counting.connection().execute("PRAGMA busy_timeout=50")
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        _ended(state, "r1", "alice", "released", cells=1, suppressed=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            state.flush_outcomes()
        blocker.execute("ROLLBACK")
        rows = {r["outcome"]: r["requests"] for r in state.activity(SINCE)["by_agreement"]}
        assert rows == {"released": 1}
    finally:
        blocker.close()
        state.close()
