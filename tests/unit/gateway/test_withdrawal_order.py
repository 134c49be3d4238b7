"""Withdrawals ordered by what a run read, not by the clocks of the processes that recorded them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from gateway.state import GatewayState, utc_now_text
from pseudonymize.pseudonym import pseudonym

KEY = bytes(range(32))


def test_a_run_reads_as_many_withdrawals_as_the_count_says(state: GatewayState) -> None:
    state.add_withdrawals("ds", "ctx", [pseudonym(KEY, "MRN-1"), pseudonym(KEY, "MRN-2")])
    state.add_withdrawals("ds", "other", [pseudonym(KEY, "MRN-3")])
    start = state.start_query("alice", "DSA-1", "h", ("ds", "ctx"))
    assert len(start.withdrawn) == state.withdrawn_count("ds", "ctx") == 2
    assert state.withdrawn_count("ds", "other") == 1 and state.withdrawn_count("ds2", "ctx") == 0


def test_a_withdrawal_recorded_after_a_run_is_counted_whatever_time_it_carries(
    state: GatewayState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that read its clock a second before a run computed its answer, then recorded the
    withdrawal after the run read them: the count has it, whatever its time."""
    applied = len(state.start_query("alice", "DSA-1", "h", ("ds", "ctx")).withdrawn)
    earlier = utc_now_text(ago_s=1)
    with monkeypatch.context() as clock:
        clock.setattr("gateway.state.utc_now_text", lambda ago_s=0.0: earlier)
        assert state.add_withdrawals("ds", "ctx", [pseudonym(KEY, "MRN-1")]) == 1
    assert state.withdrawn_count("ds", "ctx") == applied + 1


def test_a_withdrawal_is_stamped_inside_its_write_transaction(
    state: GatewayState, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its time is read once it holds the writers' turn (SQLite) and its transaction is open, not before
    it waits for them."""
    inside: list[bool] = []
    writing = state._writing

    @contextlib.contextmanager
    def noted() -> Iterator[sa.Connection]:
        with writing() as conn:
            inside.append(True)
            yield conn
            inside.append(False)

    def clock(ago_s: float = 0.0) -> str:
        assert inside and inside[-1], "stamped outside the write transaction"
        return "2026-01-01T00:00:00Z"

    monkeypatch.setattr(state, "_writing", noted)
    monkeypatch.setattr("gateway.state.utc_now_text", clock)
    assert state.add_withdrawals("ds", "ctx", [pseudonym(KEY, "MRN-1")]) == 1
    monkeypatch.undo()
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as conn:
            stamped = conn.execute(sa.text("select at from withdrawals")).scalars().all()
    finally:
        engine.dispose()
    assert stamped == ["2026-01-01T00:00:00Z"]
