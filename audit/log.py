"""The log writer: durable group-committed appends, signed checkpoints, proofs, cosignatures and export.

Group commit: an appender validates and canonicalizes its event, queues it, and waits; the first appender
that finds no commit in progress becomes the leader and writes everything queued into one database
transaction (one fsync), so concurrent appenders share a commit. Across processes, each transaction reads
and writes the head row under the database's write lock (see `audit.storage`), which keeps one linear
history. An append returns only after its commit.

`append_soon` is the same append for a caller that must not hold a thread while the commit runs (an event
loop): it returns a future at once, and the log's committer thread commits everything queued, batch after
batch, while anyone waits on such a future.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection

from audit import export_format, storage
from audit.checkpoint import Checkpoint, sign_checkpoint, verify_cosignatures
from audit.entry import GENESIS_PREV, Actor, PreparedEvent, canonical, entry_bytes, format_time, prepare_event
from audit.errors import AuditError, NoteError, ProofError, StorageError
from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_ranges,
    hash_range,
    inclusion_ranges,
    leaf_hash,
    perfect_subtrees,
    verify_consistency,
)
from audit.notes import VerifierKey, parse_note, parse_verifier_key, verifier_key_text

log = logging.getLogger(__name__)
_EXPORT_BATCH = 10_000
MAX_COSIGNATURE_SKEW_S: Final = 300
"""How far a witness's cosignature may be dated ahead of this log's clock (their clocks differ a little)."""


@dataclass(frozen=True)
class AppendReceipt:
    """Where an appended entry landed; durable when returned."""

    index: int
    leaf_hash: bytes


@dataclass(frozen=True)
class StoredEntry:
    """An entry's stored (hashed) bytes and leaf hash."""

    index: int
    data: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class Event:
    """An event to append with `append_many`."""

    event_type: str
    payload: Mapping[str, Any]
    actor: Actor | None = None
    request_id: str | None = None


@dataclass(eq=False)
class _Pending:
    event: PreparedEvent
    receipt: AppendReceipt | None = None
    error: AuditError | None = None
    done: bool = False
    after: tuple[_Pending, ...] = ()
    future: Future[AppendReceipt] | None = None


class Queued:
    """An entry queued by `AuditLog.enqueue`: not acknowledged, and not durable, until a later append that
    names it in `after` returns."""

    __slots__ = ("_pending",)

    def __init__(self, pending: _Pending) -> None:
        self._pending = pending


GROUP_COMMIT_S = 0.003
"""The committer's default group-commit window (see `AuditLog.open`)."""


@dataclass
class _Queue:
    """Appends waiting for a commit; `leading` while one appender is committing a batch; `awaited` counts
    the queued entries whose future someone waits on (the committer thread wakes for them)."""

    items: list[_Pending] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    leading: bool = False
    awaited: int = 0
    closing: bool = False
    idle: bool = True
    """The committer thread waits for work (rather than gathering a batch or committing one)."""

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        self.wake = threading.Condition(self.lock)


_CHECKPOINT_ATTEMPTS: Final = 3
"""Times `checkpoint` reads and proves without the writers' lock before it does so under the lock."""


class AuditLog:
    """One site's append-only audit log on a SQLAlchemy database."""

    def __init__(
        self,
        engines: storage.Engines,
        origin: str,
        signing_key: Ed25519PrivateKey | None,
        checkpoint_interval_s: float | None,
        group_commit_s: float = GROUP_COMMIT_S,
    ) -> None:
        self._engines = engines
        self.origin = origin
        self._origin_json = canonical(origin)
        self._key = signing_key
        self._queue = _Queue()
        self._commit_lock = threading.Lock()
        self._committer: threading.Thread | None = None
        self.group_commit_s = group_commit_s
        """How long after one commit of the committer thread the next may start (group commit)."""
        self._last_commit = 0.0
        self._known_size = 0
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_interval_s is not None and signing_key is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_interval_s,), daemon=True, name="audit-ckpt"
            )
            self._checkpointer.start()

    @classmethod
    def open(
        cls,
        url: str,
        origin: str,
        signing_key: Ed25519PrivateKey | None = None,
        *,
        checkpoint_interval_s: float | None = 0.5,
        group_commit_s: float = GROUP_COMMIT_S,
    ) -> AuditLog:
        """Open (creating if needed) the log at `url`. With a signing key, a background thread signs a
        checkpoint every `checkpoint_interval_s` seconds while the log grows (None: only on request).

        `group_commit_s`: while entries awaited through `append_soon` keep coming, the committer thread
        starts a commit no sooner than this long after its last one ended, so that one transaction and
        one sync to disk carry several requests' entries (0: commit as soon as anything is awaited). An
        idle log commits at once. `append` is not delayed: its caller commits."""
        if not 0 <= group_commit_s <= 1:
            raise StorageError(f"group_commit_s must be between 0 and 1 second, not {group_commit_s}")
        if not origin or any(c.isspace() or c == "+" for c in origin):
            raise StorageError(f"origin {origin!r} must be a non-empty log name without spaces or '+'")
        engines = storage.make_engines(url)

        def initialize(conn: Connection) -> None:
            exists = conn.execute(sa.select(storage.head.c.origin)).first()
            if exists is None:
                conn.execute(
                    storage.head.insert().values(
                        id=storage.HEAD_ID, origin=origin, size=0, last_leaf=GENESIS_PREV, frontier=b""
                    )
                )
            elif exists.origin != origin:
                raise StorageError(f"this store holds the log {exists.origin!r}, not {origin!r}")

        try:
            storage.create_schema(engines.writer, storage.metadata, initialize)
        except (StorageError, sa.exc.SQLAlchemyError):
            engines.dispose()
            raise
        return cls(engines, origin, signing_key, checkpoint_interval_s, group_commit_s)

    def close(self) -> None:
        """Write what is still queued, stop the checkpoint and committer threads and release the database
        connections."""
        queue = self._queue
        with queue.changed:
            queue.closing = True
            queue.wake.notify()
        if self._committer is not None:
            self._committer.join()
        with queue.changed:
            while queue.leading:
                queue.changed.wait()
            queue.leading = True
        self._lead()
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._engines.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- appending -----------------------------------------------------------------------------------

    def enqueue(
        self,
        event_type: str,
        *,
        actor: Actor | None = None,
        request_id: str | None = None,
        payload: Mapping[str, Any],
        after: Iterable[Queued] = (),
    ) -> Queued:
        """Validate one event and queue it without waiting for a commit (an invalid payload raises here).

        The entry is written, in queue order, with the batch of the next `append` of this log. It is not
        acknowledged: a step that must not happen unless the entry is on disk appends its own entry with
        `after=[the queued ones]`, which returns only once they are all committed, and fails (writing
        nothing) if any of them could not be. A request thereby shares one commit among its steps, and its
        trail has no gap before anything it acknowledges. With `after`, this entry too is written only if
        those were."""
        return Queued(self._queued(event_type, actor, request_id, payload, after))

    def append(
        self,
        event_type: str,
        *,
        actor: Actor | None = None,
        request_id: str | None = None,
        payload: Mapping[str, Any],
        after: Iterable[Queued] = (),
    ) -> AppendReceipt:
        """Validate and append one event; returns once it, and every entry queued before it, is committed
        to disk. With `after`, it is written only if those queued entries were (StorageError otherwise)."""
        pending = self._queued(event_type, actor, request_id, payload, after)
        queue = self._queue
        with queue.changed:
            # Followers sleep on the condition, not on a lock, so a finished batch releases them all at
            # once; the first appender that finds no leader commits everything queued so far.
            while not pending.done and queue.leading:
                queue.changed.wait()
            lead = not pending.done
            if lead:
                queue.leading = True
        if lead:
            # Let appenders that are already running reach the queue, so that they share this commit.
            time.sleep(0)
            self._lead()
        if pending.error is not None:
            raise pending.error
        assert pending.receipt is not None
        return pending.receipt

    def append_soon(
        self,
        event_type: str,
        *,
        actor: Actor | None = None,
        request_id: str | None = None,
        payload: Mapping[str, Any],
        after: Iterable[Queued] = (),
    ) -> Future[AppendReceipt]:
        """`append` without waiting: validate (an invalid payload raises here) and queue one event; the
        future gives its receipt once it, and everything queued before it, is committed (StorageError if
        it was not written). The committer thread commits it; no caller's thread waits for the disk."""
        future: Future[AppendReceipt] = Future()
        self._queued(event_type, actor, request_id, payload, after, future)
        return future

    def _queued(
        self,
        event_type: str,
        actor: Actor | None,
        request_id: str | None,
        payload: Mapping[str, Any],
        after: Iterable[Queued],
        future: Future[AppendReceipt] | None = None,
    ) -> _Pending:
        """Validate one event and put it at the end of the queue."""
        pending = _Pending(
            prepare_event(event_type, actor, request_id, payload),
            after=tuple(q._pending for q in after),
            future=future,
        )
        queue = self._queue
        with queue.changed:
            if future is not None and queue.closing:
                raise StorageError("the audit log is closed")
            queue.items.append(pending)
            if future is not None:
                queue.awaited += 1
                if self._committer is None:
                    self._committer = threading.Thread(
                        target=self._commit_loop, daemon=True, name="audit-commit"
                    )
                    self._committer.start()
                if queue.idle:
                    # A committer waiting out the group-commit window or committing finds this entry
                    # when it gets there: waking it for every entry would cost a thread switch each.
                    queue.wake.notify()
        return pending

    def _commit_loop(self) -> None:
        """The committer thread: lead a commit whenever an awaited entry is queued and no one else leads;
        on close, once nothing awaited is left, stop."""
        queue = self._queue
        while True:
            with queue.changed:
                queue.idle = True
                while queue.leading or not (queue.awaited or queue.closing):
                    queue.wake.wait()
                queue.idle = False
                if not queue.awaited:
                    return
                # Group commit: while commits follow each other closely (under load), the next one waits
                # until `group_commit_s` after the last ended, so that it carries more requests' entries.
                until = self._last_commit + self.group_commit_s
                while not queue.closing and (left := until - time.monotonic()) > 0:
                    queue.wake.wait(left)
                if queue.leading or not queue.awaited:
                    continue  # an `append` meanwhile committed them, or is committing
                queue.leading = True
            try:
                self._lead()
                self._last_commit = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the batch's futures carry the error; the thread goes on
                # The class name only: a driver's message can quote what was being written.
                log.error("audit: the committer's commit failed (%s)", type(exc).__name__)

    def _lead(self) -> None:
        """As the leader (`queue.leading` set by the caller): commit everything queued, then step down."""
        queue = self._queue
        with queue.changed:
            batch, queue.items = queue.items, []
            queue.awaited = 0
        try:
            with self._commit_lock:
                self._commit(batch)
        except BaseException as exc:
            # Whatever went wrong, no appender may be left waiting for a commit that will not come.
            error = StorageError(f"append failed, nothing was written: {exc!r}")
            for p in batch:
                if not p.done:
                    p.error, p.done = error, True
            raise
        finally:
            with queue.changed:
                queue.leading = False
                queue.changed.notify_all()
                if queue.awaited or queue.closing:
                    queue.wake.notify()
            _settle(batch)

    def append_many(self, events: Iterable[Event]) -> list[AppendReceipt]:
        """Append a batch of events in one transaction (all or nothing)."""
        batch = [_Pending(prepare_event(e.event_type, e.actor, e.request_id, e.payload)) for e in events]
        with self._commit_lock:
            self._commit(batch)
        for p in batch:
            if p.error is not None:
                raise p.error
        return [p.receipt for p in batch if p.receipt is not None]

    def _commit(self, batch: list[_Pending]) -> None:
        # Queue order puts an entry after everything it depends on: a dependency in an earlier batch has
        # its outcome already, and one in this batch shares its transaction.
        # A dependency neither written nor in this batch (taken by another committer) counts as not written.
        in_batch = {id(p) for p in batch}
        for p in batch:
            if any(d.error is not None or (not d.done and id(d) not in in_batch) for d in p.after):
                p.error = StorageError("append refused: an earlier entry it depends on was not written")
                p.done = True
                in_batch.discard(id(p))  # what depends on this one is refused in turn
        batch = [p for p in batch if not p.done]
        if not batch:
            return
        receipts: list[AppendReceipt] = []
        try:
            with self._engines.exclusive(), self._engines.writer.begin() as conn:
                head = storage.lock_head(conn)
                cr = _tree(head)
                prev = head.last_leaf
                stamp = format_time(time.time())
                entry_rows: list[tuple[int, bytes, bytes]] = []
                node_rows: list[tuple[int, int, bytes]] = []
                for p in batch:
                    index = cr.size
                    data = entry_bytes(
                        p.event, index=index, origin_json=self._origin_json, prev=prev, time=stamp
                    )
                    leaf = leaf_hash(data)
                    node_rows.extend(cr.append(leaf))
                    entry_rows.append((index, leaf, data))
                    receipts.append(AppendReceipt(index, leaf))
                    prev = leaf
                storage.write_batch(conn, entry_rows, node_rows, storage.HeadState(cr.size, prev, cr.pack()))
        except sa.exc.SQLAlchemyError as exc:
            error = StorageError(f"append failed, nothing was written: {type(exc).__name__}: {exc}")
            for p in batch:
                p.error, p.done = error, True
            # Queued entries have no caller waiting to hear it: say here that they are lost.
            log.error(
                "audit: a commit of %d entries failed (%s); none was written", len(batch), type(exc).__name__
            )
            return
        self._known_size = max(self._known_size, cr.size)
        for p, receipt in zip(batch, receipts, strict=True):
            p.receipt, p.done = receipt, True

    # -- reading -------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of committed entries."""
        with self._engines.reader.connect() as conn:
            return int(storage.read_head(conn).size)

    def entries(self, start: int, end: int) -> list[StoredEntry]:
        """Stored entries with start ≤ index < end."""
        t = storage.entries
        with self._engines.reader.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.idx, t.c.body, t.c.leaf)
                .where(t.c.idx >= start, t.c.idx < end)
                .order_by(t.c.idx)
            )
            return [StoredEntry(int(r.idx), bytes(r.body), bytes(r.leaf)) for r in rows]

    def _checked_size(self, conn: Connection, size: int) -> None:
        # The log only grows, so a size seen once stays valid; only larger sizes need the head row.
        if 0 <= size <= self._known_size:
            return
        current = int(storage.read_head(conn).size)
        self._known_size = max(self._known_size, current)
        if not 0 <= size <= current:
            raise StorageError(f"tree size {size} is beyond the log's size {current}")

    def root(self, size: int) -> bytes:
        """The Merkle root of the first `size` entries."""
        with self._engines.reader.connect() as conn:
            self._checked_size(conn, size)
            return _root(conn, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry `index` in the tree of `size` (O(log n) reads)."""
        if not 0 <= index < size:
            raise StorageError(f"index {index} is not below size {size}")
        with self._engines.reader.connect() as conn:
            self._checked_size(conn, size)
            return _proof(conn, inclusion_ranges(index, size))

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 consistency proof from size `old` to size `new` (empty when old is 0 or equals new)."""
        if not 0 <= old <= new:
            raise StorageError(f"no consistency proof from size {old} to {new}")
        with self._engines.reader.connect() as conn:
            self._checked_size(conn, new)
            return _consistency(conn, old, new)

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint(self) -> str:
        """Sign a checkpoint of the current size (or return the latest if nothing was appended).

        Before signing, the new tree is proven consistent with the last signed checkpoint; a store that
        fails that is refused (StorageError) rather than signed, so the log never signs a fork. The note
        returned covers every entry committed before the call.

        The proof is read and checked without the writers' lock, from committed rows: stored entries and
        nodes never change, and the latest checkpoint is read before the head (a checkpoint never covers
        more than the head). The lock is taken to store the signed checkpoint, after confirming that the
        checkpoint it was proven against is still the latest; should another writer have signed meanwhile,
        its note is returned if it covers as much, and the proof is read again against it otherwise.
        Appends of every worker wait while the lock is held, and reading and checking the proof under it
        held them for about 10 ms on a busy worker.
        """
        if self._key is None:
            raise StorageError("this log was opened without a signing key")
        for _ in range(_CHECKPOINT_ATTEMPTS):
            with self._engines.reader.connect() as conn:
                last = _latest_checkpoint_row(conn)
                row = storage.read_head(conn)
                head = storage.HeadState(int(row.size), bytes(row.last_leaf), bytes(row.frontier))
                root = _proven_root(conn, last, head)
            if last is not None and int(last.size) == head.size:
                return str(last.note)
            note = sign_checkpoint(Checkpoint(self.origin, head.size, root), self._key)
            with self._commit_lock, self._engines.exclusive(), self._engines.writer.begin() as conn:
                storage.lock_head(conn)  # signers take turns here (on PostgreSQL the row lock does it)
                latest = _latest_checkpoint_row(conn)
                if _same_checkpoint(latest, last):
                    _store_checkpoint(conn, head.size, root, note)
                    return note
                if latest is None:
                    raise StorageError("the signed checkpoints vanished from the store while signing")
                if int(latest.size) >= head.size:
                    return str(latest.note)
        # Other writers signed between every read and its lock: prove and sign under the lock.
        with self._commit_lock, self._engines.exclusive(), self._engines.writer.begin() as conn:
            head = storage.lock_head(conn)
            last = _latest_checkpoint_row(conn)
            root = _proven_root(conn, last, head)
            if last is not None and int(last.size) == head.size:
                return str(last.note)
            note = sign_checkpoint(Checkpoint(self.origin, head.size, root), self._key)
            _store_checkpoint(conn, head.size, root, note)
            return note

    def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint note (without cosignatures), or None."""
        with self._engines.reader.connect() as conn:
            row = _latest_checkpoint_row(conn)
            return None if row is None else str(row.note)

    def checkpoint_note(self, size: int) -> str | None:
        """The signed checkpoint of exactly `size` with its collected cosignature lines, or None."""
        with self._engines.reader.connect() as conn:
            return _note_with_cosignatures(conn, size)

    def add_cosignature(self, size: int, line: str, witness_key: str | VerifierKey) -> None:
        """Store a witness's cosignature line for the checkpoint of `size` after verifying it (one line:
        the line that verifies is the line stored). A line dated more than `MAX_COSIGNATURE_SKEW_S` ahead
        of this log's clock is refused (NoteError)."""
        key = parse_verifier_key(witness_key) if isinstance(witness_key, str) else witness_key
        if line.rstrip("\n").count("\n"):
            raise NoteError("a cosignature is one line; add each witness's line on its own")
        with self._engines.writer.begin() as conn:
            row = conn.execute(
                sa.select(storage.checkpoints.c.note).where(storage.checkpoints.c.size == size)
            ).first()
            if row is None:
                raise StorageError(f"no checkpoint of size {size} was signed")
            note = parse_note(str(row.note) + (line if line.endswith("\n") else line + "\n"))
            if not verify_cosignatures(note, [key]):
                raise NoteError(f"the line is not a cosignature by {key.name}")
            # A date far ahead vouches for nothing yet, and no auditor's verifier counts it; refused here
            # rather than exported beside the checkpoint.
            stamp = int.from_bytes(note.signatures[-1].signature[:8], "big")
            ahead = stamp - time.time()
            if ahead > MAX_COSIGNATURE_SKEW_S:
                raise NoteError(
                    f"the cosignature by {key.name} is dated {stamp}, more than {MAX_COSIGNATURE_SKEW_S} s "
                    f"ahead of this log's clock"
                )
            conn.execute(
                sa.delete(storage.cosignatures).where(
                    storage.cosignatures.c.size == size, storage.cosignatures.c.witness == key.name
                )
            )
            conn.execute(
                storage.cosignatures.insert().values(
                    size=size, witness=key.name, line=note.signatures[-1].line()
                )
            )

    def verifier_key(self) -> str:
        """The log key's verifier-key text (name = origin) for auditors and witnesses."""
        if self._key is None:
            raise StorageError("this log was opened without a signing key")
        return verifier_key_text(self.origin, self._key.public_key())

    def _checkpoint_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self._checkpoint_due(interval):
                    self.checkpoint()
            except (AuditError, sa.exc.SQLAlchemyError) as exc:
                # The next tick retries; appends never depend on this thread.
                log.warning("audit checkpoint failed: %s", exc)

    def _checkpoint_due(self, interval: float) -> bool:
        """Whether this tick should sign: the log has grown past its latest checkpoint, and no process
        sharing the log (another worker) signed one within the last 0.9 interval.

        One checkpoint covers every worker's entries, and each signing reads the store, signs, and takes
        every writer's lock to store the note: several workers each signing every interval did that many
        times the work for nothing. Read without the writers' lock."""
        with self._engines.reader.connect() as conn:
            latest = _latest_checkpoint_row(conn)
            size = int(storage.read_head(conn).size)
        if latest is None:
            return True
        # A tenth of the interval of slack: workers ticking in step must not both see the other's as
        # recent. A signing time ahead of the clock (the clock was set back) does not hold signing off.
        signed_at, now = float(latest.signed_at), time.time()
        return int(latest.size) < size and (signed_at <= now - 0.9 * interval or signed_at > now)

    # -- export --------------------------------------------------------------------------------------

    def export(self, out: Path | str | IO[bytes], *, replace: bool = True) -> Checkpoint:
        """Write every entry up to the latest signed checkpoint, that checkpoint and its cosignatures.

        A path is written whole or not at all: into a new file beside it, synced to disk and then renamed
        onto it, so a failed or killed export leaves whatever the path held before (a link is followed, and
        its target replaced). With `replace=False` an existing file is not replaced: FileExistsError."""
        if isinstance(out, Path | str):
            target = Path(out).resolve()
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
            temp = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    # The mode of the file it replaces, or the one open() would give (mkstemp's is 0600).
                    try:
                        mode = target.stat().st_mode & 0o666
                    except FileNotFoundError:
                        mode = 0o644
                        with contextlib.suppress(OSError, ValueError, StopIteration):
                            status = Path("/proc/self/status").read_text().splitlines()
                            umask = next(line for line in status if line.startswith("Umask:")).split()[1]
                            mode = 0o666 & ~int(umask, 8)
                    os.fchmod(f.fileno(), mode)
                    checkpoint = self.export(f)
                    os.fsync(f.fileno())
                if not replace:
                    try:
                        os.link(temp, target)  # fails on an existing file, however recently it appeared
                    except FileExistsError:
                        raise
                    except OSError:  # a file system without hard links
                        if target.exists():
                            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
                    else:
                        temp.unlink()
                if temp.exists():
                    temp.replace(target)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            with contextlib.suppress(OSError):  # the rename is durable once the folder is synced
                folder = os.open(target.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
            return checkpoint
        with self._engines.reader.connect() as conn:
            row = _latest_checkpoint_row(conn)
            if row is None:
                raise StorageError("no checkpoint has been signed yet; sign one before exporting")
            size = int(row.size)
            note = _note_with_cosignatures(conn, size)
            assert note is not None
            out.write(export_format.header(self.origin, size))
            for chunk in _stream_bodies(conn, size):
                out.write(b"\n".join(chunk) + b"\n")
            out.write(note.encode())
            out.flush()
            return Checkpoint(self.origin, size, bytes(row.root))


def _tree(head: storage.HeadState) -> CompactRange:
    try:
        return CompactRange.from_state(head.size, head.frontier)
    except ValueError:
        raise StorageError(f"the head row is corrupt: size {head.size} does not match its subtrees") from None


def _stream_bodies(conn: Connection, size: int) -> Iterator[list[bytes]]:
    t = storage.entries
    start = 0
    while start < size:
        end = min(size, start + _EXPORT_BATCH)
        rows = conn.execute(
            sa.select(t.c.body).where(t.c.idx >= start, t.c.idx < end).order_by(t.c.idx)
        ).all()
        if len(rows) != end - start:
            raise StorageError(f"entries {start}..{end - 1} are incomplete in the store")
        yield [bytes(r.body) for r in rows]
        start = end


def _proven_root(conn: Connection, last: Any, head: storage.HeadState) -> bytes:
    """The root of the tree at `head`, proven consistent with the checkpoint `last` (None: none yet);
    StorageError for a store that does not prove it, which must never be signed."""
    size = head.size
    root = _tree(head).root()
    if last is None:
        return root
    last_size = int(last.size)
    if last_size > size:
        raise StorageError(f"store has {size} entries but checkpoint {last_size} was signed")
    try:
        proof = _consistency(conn, last_size, size)
        if last_size > 0:
            verify_consistency(last_size, size, proof, bytes(last.root), root)
    except ProofError as exc:
        raise StorageError(f"refusing to sign: not consistent with checkpoint {last_size}: {exc}") from None
    return root


def _same_checkpoint(a: Any, b: Any) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and int(a.size) == int(b.size))


def _store_checkpoint(conn: Connection, size: int, root: bytes, note: str) -> None:
    conn.execute(storage.checkpoints.insert().values(size=size, root=root, note=note, signed_at=time.time()))


def _latest_checkpoint_row(conn: Connection) -> Any:
    t = storage.checkpoints
    return conn.execute(
        sa.select(t.c.size, t.c.root, t.c.note, t.c.signed_at).order_by(t.c.size.desc()).limit(1)
    ).first()


def _note_with_cosignatures(conn: Connection, size: int) -> str | None:
    row = conn.execute(
        sa.select(storage.checkpoints.c.note).where(storage.checkpoints.c.size == size)
    ).first()
    if row is None:
        return None
    lines = conn.execute(
        sa.select(storage.cosignatures.c.line)
        .where(storage.cosignatures.c.size == size)
        .order_by(storage.cosignatures.c.witness)
    ).scalars()
    return str(row.note) + "".join(str(line) for line in lines)


def _root(conn: Connection, size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    nodes = storage.fetch_nodes(conn, perfect_subtrees(0, size))
    return hash_range(0, size, nodes)


def _proof(conn: Connection, ranges: list[tuple[int, int]]) -> list[bytes]:
    keys = [k for start, end in ranges for k in perfect_subtrees(start, end)]
    nodes = storage.fetch_nodes(conn, keys)
    missing = [k for k in keys if k not in nodes]
    if missing:
        raise StorageError(f"the store is missing tree nodes {missing[:3]}")
    return [hash_range(start, end, nodes) for start, end in ranges]


def _consistency(conn: Connection, old: int, new: int) -> list[bytes]:
    if old == 0 or old == new:
        return []
    return _proof(conn, consistency_ranges(old, new))


def _settle(batch: list[_Pending]) -> None:
    """Resolve the futures of a finished batch (`append_soon`'s callers), each with its receipt or error. A
    future its caller cancelled (it stopped waiting) is passed over: the entry is committed all the same,
    and the other callers of the batch must still hear of theirs."""
    for p in batch:
        if p.future is None:
            continue
        with contextlib.suppress(InvalidStateError):
            if p.error is not None:
                p.future.set_exception(p.error)
            elif p.receipt is not None:
                p.future.set_result(p.receipt)
            else:
                p.future.set_exception(StorageError("append failed, nothing was written"))
