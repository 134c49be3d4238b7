"""Several gateway workers on one state database and audit log: each opens them at start, and their
writers take turns."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from pathlib import Path

import sqlalchemy as sa
from state_checks import another_worker_holding_the_turn, assert_counted_once_each

from audit.log import AuditLog
from gateway.federation.replay import NonceLedger
from gateway.state import GatewayState

WORKERS = 6
ORIGIN = "example.org/fedgate/startup-test"
ASKS = 300


def _open(url: str, ready: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]) -> None:
    try:
        ready.wait(timeout=30)
        GatewayState(url).close()
        NonceLedger(url).close()
        AuditLog.open(url.replace("state-", "audit-"), ORIGIN, None, checkpoint_interval_s=None).close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the parent asserts on what each worker reports
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_starting_together_all_open_a_new_state_file(tmp_path: Path) -> None:
    # Before: two workers could both find no table and both CREATE (the second died with "already exists"),
    # or one found the other's lock while switching the new file to WAL ("database is locked").
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'state-{attempt}.db'}"
        ready = context.Barrier(WORKERS)
        results: multiprocessing.Queue[str] = context.Queue()
        workers = [context.Process(target=_open, args=(url, ready, results)) for _ in range(WORKERS)]
        for w in workers:
            w.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(timeout=30)
        assert outcomes == ["ok"] * WORKERS
        tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
        assert {"query_counts", "requests", "outcomes", "withdrawals"} <= tables


def test_opening_again_keeps_what_is_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = GatewayState(url)
    assert first.count_query("alice", "DSA-1", "ab" * 32) == 1
    first.close()
    again = GatewayState(url)
    assert again.count_query("alice", "DSA-1", "ab" * 32) == 2
    again.close()


def test_writers_of_one_file_take_turns_on_the_lock_beside_it(tmp_path: Path) -> None:
    # Another worker holding the writers' lock holds up this one's transactions, which then go ahead the
    # moment it lets go, instead of polling in SQLite's busy handler.
    with another_worker_holding_the_turn(tmp_path) as (state, let_go):
        added: list[int] = []
        writer = threading.Thread(
            target=lambda: added.append(state.add_withdrawals("ds", "ctx", ["0f" * 16]))
        )
        writer.start()
        writer.join(0.3)
        assert writer.is_alive() and added == []
        let_go()
        writer.join(5)
        assert added == [1]


def test_counting_a_query_does_not_wait_for_another_workers_turn(tmp_path: Path) -> None:
    # The count is one statement that SQLite commits within a single call: it needs SQLite's write lock
    # only while SQLite works, so a worker holding the writers' turn (here, for ever) does not hold it up.
    with another_worker_holding_the_turn(tmp_path) as (state, _):
        counted: list[int] = []
        asker = threading.Thread(
            target=lambda: counted.extend(state.count_query("alice", "DSA-1", "h") for _ in range(3))
        )
        asker.start()
        asker.join(5)
        assert counted == [1, 2, 3]


def _ask(
    url: str, ready: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[list[int]]
) -> None:
    state = GatewayState(url)
    try:
        ready.wait(timeout=30)
        results.put([state.count_query("alice", "DSA-1", "h") for _ in range(ASKS)])
    finally:
        state.close()


def test_workers_asking_the_same_query_at_once_are_each_counted_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    GatewayState(url).close()
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(4)
    results: multiprocessing.Queue[list[int]] = context.Queue()
    workers = [context.Process(target=_ask, args=(url, ready, results)) for _ in range(4)]
    for w in workers:
        w.start()
    seen = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    # One worker's askings follow each other: each sees more than the one before.
    assert all(a < b for asked in seen for a, b in itertools.pairwise(asked))
    assert_counted_once_each([n for asked in seen for n in asked])
    state = GatewayState(url)
    assert state.count_query("alice", "DSA-1", "h") == 4 * ASKS + 1
    state.close()


def test_a_claim_left_by_a_stopped_approval_goes_back_to_the_queue(tmp_path: Path) -> None:
    from gateway.state import GatewayState, new_request

    state = GatewayState(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        principal = {"issuer": "https://idp.example", "sub": "r", "org": "o", "country": "DE", "roles": []}
        spec = {"agreement": "DSA-1", "dataset": "cohort", "kind": "count"}
        for rid in ("r1", "r2"):  # queued within one second: the id orders them
            state.save_request(new_request(rid, "https://idp.example\nr", principal, spec, "0" * 64, []))
            assert state.update_request(rid, expect="pending_approval", status="deciding", reasons=[],
                                        result=None, decided_by="steward")  # fmt: skip
        assert state.release_stale_claims(older_than_s=3600) == 0  # both claims are fresh
        assert state.release_stale_claims(older_than_s=-5) == 2  # as if both had been left an hour ago
        assert [r.request_id for r in state.list_requests("pending_approval")] == ["r1", "r2"]
        assert [r.request_id for r in state.list_requests("pending_approval", limit=1, offset=1)] == ["r2"]
    finally:
        state.close()


def test_a_claim_taken_over_after_it_was_put_back_cannot_be_finished_by_its_first_holder(
    tmp_path: Path,
) -> None:
    from gateway.state import GatewayState, new_request

    state = GatewayState(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        principal = {"issuer": "https://idp.example", "sub": "r", "org": "o", "country": "DE", "roles": []}
        spec = {"agreement": "DSA-1", "dataset": "cohort", "kind": "count"}
        state.save_request(new_request("r1", "https://idp.example\nr", principal, spec, "0" * 64, []))
        claim = {"reasons": [], "result": None}
        assert state.update_request(
            "r1", expect="pending_approval", status="deciding", decided_by="a", **claim
        )
        assert state.release_stale_claims(older_than_s=-5) == 1  # steward a's run outlived its claim
        assert state.update_request(
            "r1", expect="pending_approval", status="deciding", decided_by="b", **claim
        )
        late = state.update_request(
            "r1", expect="deciding", status="released", decided_by="a", claimed_by="a", **claim
        )
        rejected = state.update_request(
            "r1", expect="deciding", status="rejected", decided_by="b", claimed_by="b", **claim
        )
        assert (late, rejected) == (False, True)
        stored = state.get_request("r1")
        assert stored is not None and (stored.status, stored.decided_by) == ("rejected", "b")
    finally:
        state.close()
