"""How requests ended, as the steward's activity summary reports them."""

from __future__ import annotations

from typing import Any

from gateway.state import GatewayState

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
