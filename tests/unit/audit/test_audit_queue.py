"""Queued entries: written in order by the next append, never acknowledged before it, never behind a gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from audit_helpers import ORIGIN, digest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import storage
from audit.entry import Actor
from audit.errors import PayloadError, StorageError
from audit.log import AuditLog

ALICE = Actor("alice", "uni-a")


@pytest.fixture
def first_commit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next transaction fails as a full disk or a locked database would; later ones succeed."""
    original = storage.write_batch
    calls = 0

    def failing_once(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        original(*args, **kwargs)

    monkeypatch.setattr(storage, "write_batch", failing_once)


def received(i: int) -> dict[str, Any]:
    return {"query_hash": digest(f"q{i}"), "kind": "count", "dataset": "d1", "dsa": "dsa-1"}


def test_queued_entries_are_written_in_order_by_the_next_append(log: AuditLog) -> None:
    first = log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))
    second = log.enqueue("auth.failed", payload={"reason": "expired"})
    assert log.size == 0, "a queued entry is not written on its own"
    receipt = log.append("auth.failed", payload={"reason": "missing"}, after=[first, second])
    assert receipt.index == 2 and log.size == 3
    kinds = [e.data for e in log.entries(0, 3)]
    assert b"query.received" in kinds[0] and b'"expired"' in kinds[1] and b'"missing"' in kinds[2]


def test_an_invalid_queued_payload_is_refused_at_once(log: AuditLog) -> None:
    with pytest.raises(PayloadError):
        log.enqueue("auth.failed", payload={"reason": "expired", "password": "x"})
    log.append("auth.failed", payload={"reason": "missing"})
    assert log.size == 1


def test_an_append_after_an_unwritten_entry_writes_nothing(log: AuditLog, first_commit_fails: None) -> None:
    lost = log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))
    # Another request's append leads the batch that holds the queued entry, and that batch fails.
    with pytest.raises(StorageError):
        log.append("auth.failed", payload={"reason": "expired"})
    # The step that depends on the lost entry is refused, though the storage works again ...
    with pytest.raises(StorageError, match="depends on was not written"):
        log.append("auth.failed", actor=ALICE, request_id="req-1", payload={"reason": "x"}, after=[lost])
    # ... while appends that do not depend on it go through.
    assert log.append("auth.failed", payload={"reason": "missing"}).index == 0
    assert log.size == 1


def test_closing_the_log_writes_what_is_still_queued(tmp_path: Path, log_key: Ed25519PrivateKey) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None) as log:
        log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))
    with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None) as reopened:
        assert reopened.size == 1


def test_what_follows_a_lost_entry_is_not_written_either(log: AuditLog, first_commit_fails: None) -> None:
    decided = log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))
    with pytest.raises(StorageError):
        log.append("auth.failed", payload={"reason": "expired"})  # another request's batch, lost
    executed = log.enqueue(
        "query.received", actor=ALICE, request_id="req-1", payload=received(2), after=[decided]
    )
    with pytest.raises(StorageError, match="depends on was not written"):
        log.append("auth.failed", actor=ALICE, request_id="req-1", payload={"reason": "x"}, after=[executed])
    assert log.size == 0, "no step of the request is written once one before it was lost"


def test_an_entry_another_committer_holds_is_not_taken_as_written(log: AuditLog) -> None:
    decided = log.enqueue("query.received", actor=ALICE, request_id="req-1", payload=received(1))
    # Another committer (closing the log, say) has taken the queue but not written it yet.
    with log._queue.changed:
        taken, log._queue.items = log._queue.items, []
    with pytest.raises(StorageError, match="depends on was not written"):
        log.append("auth.failed", actor=ALICE, request_id="req-1", payload={"reason": "x"}, after=[decided])
    log._commit(taken)
    assert log.size == 1
