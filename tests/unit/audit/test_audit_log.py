"""The log writer: appends and receipts, group commit, checkpoints that never fork, proofs, cosignatures."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_helpers import ORIGIN, append_samples, commit_counter, digest, sample, sample_type
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import log as audit_log
from audit import storage
from audit.checkpoint import cosign_checkpoint, open_checkpoint, parse_checkpoint_body
from audit.entry import GENESIS_PREV, Actor
from audit.errors import EntryError, NoteError, PayloadError, StorageError
from audit.log import MAX_COSIGNATURE_SKEW_S, AuditLog, Event
from audit.merkle import leaf_hash, root_of, verify_consistency, verify_inclusion
from audit.notes import ALG_COSIGNATURE_V1, b64, parse_note, parse_verifier_key, verifier_key_text
from audit.verify import verify_export


def test_append_returns_index_and_leaf_hash_of_the_stored_bytes(log: AuditLog) -> None:
    r0 = log.append("auth.failed", payload={"reason": "expired"})
    payload = {"query_hash": digest("q"), "kind": "count", "dataset": "d1", "dsa": "dsa-1"}
    r1 = log.append("query.received", actor=Actor("alice", "uni-a"), request_id="req-9", payload=payload)
    assert (r0.index, r1.index) == (0, 1)
    stored = log.entries(0, 2)
    assert [e.leaf_hash for e in stored] == [r0.leaf_hash, r1.leaf_hash]
    assert all(leaf_hash(e.data) == e.leaf_hash for e in stored)
    first, second = (json.loads(e.data) for e in stored)
    assert first["prev"] == b64(GENESIS_PREV) and second["prev"] == b64(r0.leaf_hash)
    assert second["origin"] == ORIGIN and second["type"] == "query.received"
    assert second["actor"] == {"org": "uni-a", "sub": "alice"} and second["request_id"] == "req-9"
    assert log.size == 2


def test_invalid_events_write_nothing(log: AuditLog) -> None:
    with pytest.raises(PayloadError):
        log.append("auth.failed", payload={"reason": "expired", "password": "x"})
    with pytest.raises(EntryError):
        log.append("auth.failed", request_id="bad id", payload={"reason": "expired"})
    assert log.size == 0


def test_append_many_is_one_transaction(log: AuditLog) -> None:
    receipts = log.append_many(Event(sample_type(i), sample(i)) for i in range(100))
    assert [r.index for r in receipts] == list(range(100))
    with pytest.raises(PayloadError):
        log.append_many([Event("auth.failed", {"reason": "x"}), Event("auth.failed", {"nope": 1})])
    assert log.size == 100


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_batch_larger_than_one_insert_is_stored_whole_and_proves(
    database: str, tmp_path: Path, log_key: Ed25519PrivateKey, request: pytest.FixtureRequest
) -> None:
    # Rows go in as multi-row INSERTs of at most ROWS_PER_INSERT: a batch spanning three of them.
    url = f"sqlite:///{tmp_path / 'audit.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None) as log:
        _stored_whole(log)


def _stored_whole(log: AuditLog) -> None:
    count = 2 * storage.ROWS_PER_INSERT + 7
    receipts = log.append_many(Event(sample_type(i), sample(i)) for i in range(count))
    assert log.size == count
    stored = log.entries(0, count)
    assert [e.leaf_hash for e in stored] == [r.leaf_hash for r in receipts]
    root = log.root(count)
    assert root == root_of([e.leaf_hash for e in stored])
    for index in (0, storage.ROWS_PER_INSERT - 1, storage.ROWS_PER_INSERT, count - 1):
        proof = log.inclusion_proof(index, count)
        verify_inclusion(index, count, stored[index].leaf_hash, proof, root)  # raises if it does not hold


def test_concurrent_appenders_share_commits(log: AuditLog) -> None:
    commits = commit_counter(log)

    def worker() -> None:
        for i in range(50):
            log.append("auth.failed", payload={"reason": f"r{i}"})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.size == 400
    assert commits[0] < 400, "group commit should batch concurrent appends"
    entries = log.entries(0, 400)
    assert [json.loads(e.data)["index"] for e in entries] == list(range(400))
    for a, b in itertools.pairwise(entries):
        assert json.loads(b.data)["prev"] == b64(a.leaf_hash)


def test_proofs_from_stored_nodes_verify(log: AuditLog) -> None:
    append_samples(log, 37)
    leaves = [e.leaf_hash for e in log.entries(0, 37)]
    for size in (1, 2, 5, 16, 37):
        root = log.root(size)
        assert root == root_of(leaves[:size])
        for index in {0, size // 2, size - 1}:
            verify_inclusion(index, size, leaves[index], log.inclusion_proof(index, size), root)
        for old in sorted({1, min(3, size), size}):
            verify_consistency(old, size, log.consistency_proof(old, size), log.root(old), root)
    assert log.consistency_proof(0, 5) == []
    with pytest.raises(StorageError):
        log.inclusion_proof(3, 38)
    with pytest.raises(StorageError):
        log.inclusion_proof(5, 5)


@pytest.mark.parametrize("unlocked_attempts", [3, 0], ids=["proof-read-unlocked", "proof-read-under-lock"])
def test_checkpoints_are_signed_consistent_and_not_repeated(
    log: AuditLog, log_key: Ed25519PrivateKey, unlocked_attempts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "_CHECKPOINT_ATTEMPTS", unlocked_attempts)
    vkey = parse_verifier_key(log.verifier_key())
    assert vkey.name == ORIGIN
    empty = open_checkpoint(log.checkpoint(), [vkey], ORIGIN).checkpoint
    assert empty.size == 0
    append_samples(log, 10)
    first = log.checkpoint()
    assert log.checkpoint() == first  # nothing appended: the same checkpoint, not a new signature
    cp = open_checkpoint(first, [vkey], ORIGIN).checkpoint
    assert (cp.size, cp.root) == (10, log.root(10))
    append_samples(log, 3)
    second = open_checkpoint(log.checkpoint(), [vkey]).checkpoint
    verify_consistency(10, 13, log.consistency_proof(10, 13), cp.root, second.root)
    assert log.latest_checkpoint() is not None and "\n13\n" in (log.latest_checkpoint() or "")


@pytest.mark.parametrize("unlocked_attempts", [3, 0], ids=["proof-read-unlocked", "proof-read-under-lock"])
def test_the_writer_refuses_to_sign_a_rewritten_history(
    log: AuditLog, unlocked_attempts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "_CHECKPOINT_ATTEMPTS", unlocked_attempts)
    append_samples(log, 12)
    log.checkpoint()
    # Someone with database access rewrites entry 3's leaf hash and everything derived from it.
    with log._engines.writer.begin() as conn:
        conn.execute(storage.entries.update().where(storage.entries.c.idx == 3).values(leaf=b"\x07" * 32))
        conn.execute(sa.delete(storage.nodes))
        leaves = [
            bytes(r.leaf)
            for r in conn.execute(sa.select(storage.entries.c.leaf).order_by(storage.entries.c.idx))
        ]
        from audit.merkle import CompactRange

        cr = CompactRange()
        rows = [{"level": lv, "idx": i, "hash": h} for leaf in leaves for lv, i, h in cr.append(leaf)]
        conn.execute(storage.nodes.insert(), rows)
        conn.execute(storage.head.update().values(frontier=cr.pack()))
    append_samples(log, 1)
    with pytest.raises(StorageError, match="not consistent"):
        log.checkpoint()


@pytest.mark.parametrize("unlocked_attempts", [3, 0], ids=["proof-read-unlocked", "proof-read-under-lock"])
def test_the_writer_refuses_to_sign_after_a_rollback(
    log: AuditLog, unlocked_attempts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "_CHECKPOINT_ATTEMPTS", unlocked_attempts)
    append_samples(log, 5)
    log.checkpoint()
    with log._engines.writer.begin() as conn:
        conn.execute(storage.head.update().values(size=4))
    with pytest.raises(StorageError, match="corrupt"):
        log.checkpoint()
    with pytest.raises(StorageError, match="corrupt"):
        log.append("auth.failed", payload={"reason": "after-rollback"})


def test_background_checkpoints_follow_appends_within_a_second(
    tmp_path: Path, log_key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(f"sqlite:///{tmp_path / 'a.db'}", ORIGIN, log_key, checkpoint_interval_s=0.2) as log:
        append_samples(log, 5)
        acked = time.monotonic()
        while True:
            note = log.latest_checkpoint()
            if note and parse_checkpoint_body(parse_note(note).text).size >= 5:
                break
            assert time.monotonic() - acked < 1.0, "no checkpoint within a second of the append"
            time.sleep(0.02)


def test_appends_commit_while_a_checkpoint_reads_and_checks_its_proof(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_samples(log, 3)
    log.checkpoint()
    append_samples(log, 2)
    reading, release = threading.Event(), threading.Event()
    real_consistency = audit_log._consistency

    def slow_consistency(conn: sa.Connection, old: int, new: int) -> list[bytes]:
        reading.set()
        assert release.wait(timeout=30)
        return real_consistency(conn, old, new)

    monkeypatch.setattr(audit_log, "_consistency", slow_consistency)
    signer = threading.Thread(target=log.checkpoint)
    signer.start()
    try:
        assert reading.wait(timeout=10)
        appended = threading.Event()

        def append_one() -> None:
            log.append("auth.failed", payload={"reason": "expired"})
            appended.set()

        threading.Thread(target=append_one).start()
        assert appended.wait(timeout=5), "an append waited for the checkpoint's proof"
    finally:
        release.set()
        signer.join(timeout=30)
    note = log.latest_checkpoint()
    assert note is not None
    assert parse_checkpoint_body(parse_note(note).text).size == 5  # what it had read and proven
    assert log.size == 6
    assert parse_checkpoint_body(parse_note(log.checkpoint()).text).size == 6


class HeldProof:
    """`_consistency` held back by `hold` on its first call in each of the threads `a` and `b` (their
    checkpoint's read without the lock); any other call goes straight through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: Callable[[str], object]) -> None:
        self._real = audit_log._consistency
        self._hold = hold
        self._seen: set[str] = set()
        monkeypatch.setattr(audit_log, "_consistency", self)

    def __call__(self, conn: sa.Connection, old: int, new: int) -> list[bytes]:
        name = threading.current_thread().name
        if name in ("a", "b") and name not in self._seen:
            self._seen.add(name)
            self._hold(name)
        return self._real(conn, old, new)


@pytest.fixture(params=["sqlite", "postgresql"])
def two_logs(
    request: pytest.FixtureRequest, tmp_path: Path, log_key: Ed25519PrivateKey
) -> Iterator[tuple[AuditLog, AuditLog]]:
    """Two writers on one store, as two workers: 5 entries, the first 3 under a signed checkpoint."""
    url = (
        f"sqlite:///{tmp_path / 'audit.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    first = AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None)
    second = AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None)
    try:
        append_samples(first, 3)
        first.checkpoint()
        append_samples(second, 2)
        yield first, second
    finally:
        first.close()
        second.close()


def _signed_sizes(log: AuditLog) -> list[int]:
    with log._engines.reader.connect() as conn:
        return [int(r.size) for r in conn.execute(sa.select(storage.checkpoints.c.size).order_by("size"))]


def _in_thread(name: str, call: Callable[[], str], out: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            out[name] = call()
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            out[name] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_two_writers_signing_the_same_size_at_once_store_it_once(
    two_logs: tuple[AuditLog, AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_logs
    both_read = threading.Barrier(2)
    HeldProof(monkeypatch, lambda _: both_read.wait(timeout=10))
    out: dict[str, object] = {}
    for thread in [_in_thread("a", first.checkpoint, out), _in_thread("b", second.checkpoint, out)]:
        thread.join(timeout=30)
    assert isinstance(out["a"], str) and out["a"] == out["b"], out
    assert parse_checkpoint_body(parse_note(out["a"]).text).size == 5
    assert _signed_sizes(first) == [3, 5]


def test_a_checkpoint_covers_what_was_committed_before_it_though_a_smaller_one_was_signed_meanwhile(
    two_logs: tuple[AuditLog, AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_logs
    reached = {"a": threading.Event(), "b": threading.Event()}
    go = {"a": threading.Event(), "b": threading.Event()}

    def hold(name: str) -> None:
        reached[name].set()
        assert go[name].wait(timeout=10)

    HeldProof(monkeypatch, hold)
    out: dict[str, object] = {}
    b = _in_thread("b", second.checkpoint, out)  # reads 5 entries, then waits
    assert reached["b"].wait(timeout=10)
    append_samples(first, 1)
    a = _in_thread("a", first.checkpoint, out)  # reads 6 entries, then waits
    assert reached["a"].wait(timeout=10)
    go["b"].set()
    b.join(timeout=30)
    go["a"].set()
    a.join(timeout=30)
    sizes = {k: parse_checkpoint_body(parse_note(str(v)).text).size for k, v in out.items()}
    assert sizes == {"a": 6, "b": 5}, out
    assert _signed_sizes(first) == [3, 5, 6]
    for old, new in ((3, 5), (5, 6)):  # each stored checkpoint proven against the one before it
        verify_consistency(old, new, first.consistency_proof(old, new), first.root(old), first.root(new))


def test_workers_sharing_a_log_take_turns_signing_its_checkpoints(
    tmp_path: Path, log_key: Ed25519PrivateKey
) -> None:
    # Two writers on one store, as two uvicorn workers: each would sign every interval while the log
    # grows, holding every writer's lock, though one checkpoint covers both writers' entries.
    url, interval, seconds = f"sqlite:///{tmp_path / 'shared.db'}", 0.2, 2.4
    with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=interval) as first:
        time.sleep(interval / 2)  # workers start apart, so their checkpoint ticks are not in step
        with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=interval) as second:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                for writer in (first, second):
                    writer.append("auth.failed", payload={"reason": "expired"})
                time.sleep(0.005)
    with AuditLog.open(url, ORIGIN, log_key, checkpoint_interval_s=None) as log:
        with log._engines.reader.connect() as conn:
            signed = conn.execute(sa.select(sa.func.count()).select_from(storage.checkpoints)).scalar_one()
        note = log.latest_checkpoint()
        assert note is not None
        assert parse_checkpoint_body(parse_note(note).text).size >= log.size - 200  # it kept up
    ticks = seconds / interval
    assert ticks / 2 <= signed <= ticks * 1.4 + 1, f"{signed} checkpoints in {ticks:.0f} intervals"


def test_cosignatures_are_verified_before_they_are_stored(log: AuditLog) -> None:
    append_samples(log, 4)
    note = log.checkpoint()
    cp = parse_checkpoint_body(parse_note(note).text)
    w = Ed25519PrivateKey.generate()
    wkey = verifier_key_text("witness.example/w", w.public_key(), ALG_COSIGNATURE_V1)
    log.add_cosignature(4, cosign_checkpoint(cp, "witness.example/w", w, int(time.time())), wkey)
    stored = log.checkpoint_note(4) or ""
    assert stored.startswith(note) and stored.count("\u2014") == 2
    other = Ed25519PrivateKey.generate()
    with pytest.raises(NoteError):
        log.add_cosignature(4, cosign_checkpoint(cp, "witness.example/w", other, 1), wkey)
    with pytest.raises(StorageError):
        log.add_cosignature(99, cosign_checkpoint(cp, "witness.example/w", w, 1), wkey)
    # A good line with another after it: what verifies must be what is stored, so two lines are refused.
    stranger = cosign_checkpoint(cp, "witness.example/x", other, 1)
    with pytest.raises(NoteError, match="one line"):
        log.add_cosignature(4, cosign_checkpoint(cp, "witness.example/w", w, 2) + "\n" + stranger, wkey)
    assert log.checkpoint_note(4) == stored


@pytest.mark.parametrize("ahead", [MAX_COSIGNATURE_SKEW_S + 60, 2**63 - 1 - int(time.time())])
def test_a_cosignature_dated_in_the_future_is_not_stored(log: AuditLog, ahead: int) -> None:
    # Stored, it would be exported beside every later checkpoint of that size; no verifier counts it.
    append_samples(log, 4)
    note = log.checkpoint()
    cp = parse_checkpoint_body(parse_note(note).text)
    w = Ed25519PrivateKey.generate()
    wkey = verifier_key_text("witness.example/w", w.public_key(), ALG_COSIGNATURE_V1)
    with pytest.raises(NoteError, match="ahead of this log's clock"):
        log.add_cosignature(4, cosign_checkpoint(cp, "witness.example/w", w, int(time.time()) + ahead), wkey)
    assert log.checkpoint_note(4) == note
    # A witness's clock a little ahead of this log's is fine.
    log.add_cosignature(4, cosign_checkpoint(cp, "witness.example/w", w, int(time.time()) + 60), wkey)
    assert (log.checkpoint_note(4) or "").count("\u2014") == 2


def test_export_round_trip(log: AuditLog, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no checkpoint"):
        log.export(tmp_path / "none.export")
    append_samples(log, 20)
    log.checkpoint()
    append_samples(log, 2)  # not yet covered by a checkpoint: not exported
    cp = log.export(tmp_path / "log.export")
    assert cp.size == 20
    summary = verify_export(tmp_path / "log.export", log.verifier_key())
    assert (summary.size, summary.root) == (20, log.root(20))


def test_an_export_is_written_whole_or_not_at_all(
    tmp_path: Path, log_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditLog.open(f"sqlite:///{tmp_path / 'a.db'}", ORIGIN, log_key, checkpoint_interval_s=None) as log:
        append_samples(log, 5)
        log.checkpoint()
        out = tmp_path / "exports" / "log.export"
        out.parent.mkdir()
        out.write_bytes(b"an earlier export\n")
        with pytest.raises(FileExistsError):
            log.export(out, replace=False)
        assert out.read_bytes() == b"an earlier export\n"

        def full_disk(*args: object) -> Iterator[list[bytes]]:
            yield [b'{"half":']
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(audit_log, "_stream_bodies", full_disk)
            with pytest.raises(OSError, match="No space left"):
                log.export(out)
        assert out.read_bytes() == b"an earlier export\n"
        assert [p.name for p in out.parent.iterdir()] == ["log.export"]  # no half-written file left
        log.export(out)
        assert verify_export(out, log.verifier_key()).size == 5
        fresh = out.parent / "fresh.export"
        log.export(fresh, replace=False)
        assert fresh.read_bytes() == out.read_bytes()
        assert sorted(p.name for p in out.parent.iterdir()) == ["fresh.export", "log.export"]


def test_one_store_holds_one_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    AuditLog.open(url, ORIGIN, checkpoint_interval_s=None).close()
    with pytest.raises(StorageError, match="holds the log"):
        AuditLog.open(url, "fedgate.example/other", checkpoint_interval_s=None)
    with pytest.raises(StorageError):
        AuditLog.open(url, "bad origin", checkpoint_interval_s=None)
    with AuditLog.open(url, ORIGIN, checkpoint_interval_s=None) as log, pytest.raises(StorageError):
        log.checkpoint()


def test_sqlite_is_durable_wal(log: AuditLog) -> None:
    with log._engines.writer.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_statement_the_database_refuses_fails_the_commit_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with AuditLog.open(url, ORIGIN, checkpoint_interval_s=None) as log:
        log.append("auth.failed", payload={"reason": "expired"})
        admin = sa.create_engine(url)
        with admin.begin() as conn:  # the node insert fails after the entry insert went through
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_node "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        with pytest.raises(StorageError, match="disk full"):
            log.append("auth.failed", payload={"reason": "revoked"})
        with pytest.raises(StorageError, match="disk full"):
            log.append_many([Event("auth.failed", {"reason": "a"}), Event("auth.failed", {"reason": "b"})])
        assert log.size == 1 and len(log.entries(0, 10)) == 1
        with admin.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse")
        admin.dispose()
        receipt = log.append("auth.failed", payload={"reason": "revoked"})
        assert receipt.index == 1 and log.size == 2
        assert log.inclusion_proof(1, 2) and log.root(2) == root_of([e.leaf_hash for e in log.entries(0, 2)])
