"""`append_soon`: the committer thread writes an awaited entry and the trail queued before it; nobody's
thread waits for the disk, and a failed commit reaches the future."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from audit_helpers import ORIGIN, commit_counter
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_queue import ALICE, first_commit_fails, received

from audit.errors import PayloadError, StorageError
from audit.log import AppendReceipt, AuditLog

__all__ = ["first_commit_fails"]  # the fixture, shared with the queue tests


def test_the_future_resolves_once_the_entry_and_its_trail_are_written(log: AuditLog) -> None:
    trail = [log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))]
    future = log.append_soon("auth.failed", payload={"reason": "done"}, after=trail)
    receipt = future.result(timeout=10)
    assert receipt.index == 1 and log.size == 2
    stored = log.entries(0, 2)
    assert b"query.received" in stored[0].data and b'"done"' in stored[1].data
    assert receipt.leaf_hash == stored[1].leaf_hash


def test_an_invalid_payload_raises_at_once_and_queues_nothing(log: AuditLog) -> None:
    with pytest.raises(PayloadError):
        log.append_soon("auth.failed", payload={"reason": "x", "password": "hunter2"})
    assert log.append_soon("auth.failed", payload={"reason": "ok"}).result(timeout=10).index == 0
    assert log.size == 1


def test_many_threads_share_commits_and_keep_one_chain(log: AuditLog) -> None:
    commits = commit_counter(log)

    futures: list[Future[AppendReceipt]] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(50):
            f = log.append_soon("auth.failed", payload={"reason": f"w{w}-{i}"})
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    indexes = sorted(f.result(timeout=30).index for f in futures)
    assert indexes == list(range(400))
    assert commits[0] < 400, "the committer should write queued entries in batches"
    entries = log.entries(0, 400)
    assert [json.loads(e.data)["index"] for e in entries] == list(range(400))


def test_sync_and_soon_appends_mix(log: AuditLog) -> None:
    soon = [log.append_soon("auth.failed", payload={"reason": f"s{i}"}) for i in range(20)]
    now = [log.append("auth.failed", payload={"reason": f"n{i}"}) for i in range(20)]
    got = sorted([f.result(timeout=10).index for f in soon] + [r.index for r in now])
    assert got == list(range(40)) and log.size == 40


def test_a_failed_commit_reaches_the_future_and_the_next_one_succeeds(
    log: AuditLog, first_commit_fails: None
) -> None:
    trail = [log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))]
    lost = log.append_soon("auth.failed", payload={"reason": "lost"}, after=trail)
    with pytest.raises(StorageError):
        lost.result(timeout=10)
    # What depended on the lost trail is refused though the storage works again ...
    refused = log.append_soon(
        "auth.failed", actor=ALICE, request_id="req-1", payload={"reason": "x"}, after=trail
    )
    with pytest.raises(StorageError, match="depends on was not written"):
        refused.result(timeout=10)
    # ... and an independent entry is written, first in the log.
    assert log.append_soon("auth.failed", payload={"reason": "ok"}).result(timeout=10).index == 0
    assert log.size == 1


def test_an_event_loop_awaits_without_holding_a_thread(log: AuditLog) -> None:
    async def many() -> list[AppendReceipt]:
        return await asyncio.gather(
            *(
                asyncio.wrap_future(log.append_soon("auth.failed", payload={"reason": f"r{i}"}))
                for i in range(100)
            )
        )

    before = threading.active_count()
    receipts = asyncio.run(many())
    assert sorted(r.index for r in receipts) == list(range(100))
    assert threading.active_count() <= before + 1, "one committer thread, no thread per waiting append"


def test_closing_writes_what_is_awaited_and_refuses_more(tmp_path: Path, log_key: Ed25519PrivateKey) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None)
    futures = [log.append_soon("auth.failed", payload={"reason": f"r{i}"}) for i in range(30)]
    log.close()
    assert all(f.done() for f in futures)
    assert sorted(f.result().index for f in futures) == list(range(30))
    with pytest.raises(StorageError, match="closed"):
        log.append_soon("auth.failed", payload={"reason": "late"})
    with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None) as reopened:
        assert reopened.size == 30


def test_entries_awaited_soon_after_a_commit_share_the_next_one(tmp_path: Path) -> None:
    log = AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}", ORIGIN, group_commit_s=0.5)
    try:
        log.append_soon("auth.failed", payload={"reason": "first"}).result(timeout=10)
        commits = commit_counter(log)
        futures = []
        for i in range(5):  # arriving one by one, each while the window after the last commit is open
            futures.append(log.append_soon("auth.failed", payload={"reason": f"r{i}"}))
            threading.Event().wait(0.02)
        assert [f.result(timeout=10).index for f in futures] == [1, 2, 3, 4, 5]
        assert commits[0] == 1
    finally:
        log.close()


def test_without_a_window_each_awaited_entry_is_committed_as_it_comes(tmp_path: Path) -> None:
    log = AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}", ORIGIN, group_commit_s=0)
    try:
        commits = commit_counter(log)
        for i in range(5):
            log.append_soon("auth.failed", payload={"reason": f"r{i}"}).result(timeout=10)
        assert commits[0] == 5
    finally:
        log.close()


def test_an_idle_log_commits_at_once_and_close_does_not_wait_for_the_window(tmp_path: Path) -> None:
    log = AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}", ORIGIN, group_commit_s=1.0)
    started = time.monotonic()
    assert log.append_soon("auth.failed", payload={"reason": "idle"}).result(timeout=10).index == 0
    assert time.monotonic() - started < 0.5  # no commit before it: nothing to wait for
    waiting = log.append_soon("auth.failed", payload={"reason": "in-window"})
    started = time.monotonic()
    log.close()
    assert waiting.result(timeout=0).index == 1
    assert time.monotonic() - started < 0.5


def test_a_group_commit_window_outside_zero_to_one_second_is_refused(tmp_path: Path) -> None:
    for bad in (-0.001, 1.5):
        with pytest.raises(StorageError, match="group_commit_s"):
            AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}", ORIGIN, group_commit_s=bad)


def test_a_caller_that_stops_waiting_does_not_leave_the_others_of_its_batch_waiting(log: AuditLog) -> None:
    # A caller on the event loop cancels its wait (a coordinator's timeout, a shutdown): its entry is
    # committed all the same, and every other future of the same commit is still settled.
    hold = threading.Event()
    commit = log._commit

    def held(batch: list) -> None:  # type: ignore[type-arg]
        hold.wait(10)
        commit(batch)

    log._commit = held  # type: ignore[method-assign]
    futures = [log.append_soon("auth.failed", payload={"reason": f"r{i}"}) for i in range(3)]
    assert futures[0].cancel()
    hold.set()
    receipts = [f.result(timeout=10) for f in futures[1:]]
    assert [r.index for r in receipts] == [1, 2]
    assert log.size == 3
