"""The persisted count of identical queries, per researcher, agreement and query."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from state_checks import assert_counted_once_each

from gateway.state import GatewayState


def test_each_asking_counts_once_per_researcher_agreement_and_query(state: GatewayState) -> None:
    assert [state.count_query("alice", "DSA-1", "h1") for _ in range(3)] == [1, 2, 3]
    assert state.count_query("bob", "DSA-1", "h1") == 1
    assert state.count_query("alice", "DSA-2", "h1") == 1
    assert state.count_query("alice", "DSA-1", "h2") == 1
    assert state.count_query("alice", "DSA-1", "h1") == 4


def test_concurrent_askings_are_each_counted_once(state: GatewayState) -> None:
    with ThreadPoolExecutor(8) as pool:
        totals = list(pool.map(lambda _: state.count_query("alice", "DSA-1", "h"), range(40)))
    assert_counted_once_each(totals)
    assert state.count_query("alice", "DSA-1", "h") == 41


def test_the_count_survives_a_restart(state_url: str) -> None:
    first = GatewayState(state_url)
    first.count_query("alice", "DSA-1", "h")
    first.close()
    again = GatewayState(state_url)
    assert again.count_query("alice", "DSA-1", "h") == 2
    again.close()


def test_starting_a_query_counts_it_and_reads_the_withdrawals_of_its_dataset(state: GatewayState) -> None:
    state.add_withdrawals("ds", "ctx", ["0f" * 16])
    state.add_withdrawals("other", "ctx", ["1e" * 16])
    first = state.start_query("alice", "DSA-1", "h", ("ds", "ctx"))
    assert first.asked == 1
    assert first.withdrawn == state.withdrawn("ds", "ctx") and len(first.withdrawn) == 1
    assert state.start_query("alice", "DSA-1", "h", ("ds", "ctx")).asked == 2
    assert state.count_query("alice", "DSA-1", "h") == 3  # one count, whichever way it is asked
    assert state.start_query("alice", "DSA-1", "h", ("ds", "another-key")).withdrawn == []
    assert state.start_query("alice", "DSA-1", "h").withdrawn == []  # no dataset named, none read


def test_concurrent_starts_are_each_counted_once(state: GatewayState) -> None:
    with ThreadPoolExecutor(8) as pool:
        started = list(pool.map(lambda _: state.start_query("alice", "DSA-1", "h", ("ds", "ctx")), range(40)))
    assert_counted_once_each([s.asked for s in started])
    assert state.count_query("alice", "DSA-1", "h") == 41


@pytest.mark.parametrize("totals", [[1, 1], [1, 3], [2, 1, 1]])
def test_the_concurrency_check_fails_on_a_miscount(totals: list[int]) -> None:
    # The property above must be able to fail: two askings that both saw 1 would let a limit of 1 answer
    # twice; a total past the number of askings would be a count of something that was not asked.
    with pytest.raises(AssertionError):
        assert_counted_once_each(totals)
