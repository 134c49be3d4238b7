"""The gateway's own persistent state: requests awaiting or past approval, and repeated-query counts.

Kept apart from the store (read-only for queries) and the audit log (append-only). SQLite by default,
PostgreSQL in production. Holds no token and no patient-level data: principals are their verified claims,
results are what was (or would be) released.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from audit.storage import ProcessLock, create_schema, sqlite_wal
from pseudonymize.pseudonym import canonical_token, token_spellings

# Withdrawals are written in statements of this many rows: SQLite binds at most 32,766 parameters.
_ROWS_PER_STATEMENT = 500
# How long a request's outcome may wait before the background writer stores it (the activity summary reads
# whatever is waiting first), and how many may wait before older ones are dropped when the database fails.
_OUTCOME_DELAY_S = 0.05
_OUTCOMES_KEPT = 10_000

log = logging.getLogger(__name__)

RequestStatus = Literal["pending_approval", "deciding", "released", "refused", "rejected"]

Outcome = Literal["released", "refused", "pending_approval", "approved"]
"""How a request stands in the steward's activity summary: its answer `released` (it left the site),
`refused` (at some stage), `pending_approval` (waiting for a steward), or `approved` (a steward approved it
and its answer waits at the site for the researcher to collect it)."""

metadata = sa.MetaData()

query_counts = sa.Table(
    "query_counts",
    metadata,
    sa.Column("subject", sa.String(256), primary_key=True),
    sa.Column("agreement", sa.String(256), primary_key=True),
    sa.Column("query_hash", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("agreement", sa.String(256), nullable=False),
    sa.Column("dataset", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("query_hash", sa.String(64), nullable=False),
    sa.Column("principal", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("decided_by", sa.String(256), nullable=True),
)


outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False, index=True),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("org", sa.String(256), nullable=False),
    sa.Column("agreement", sa.String(256), nullable=False),
    sa.Column("dataset", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("stage", sa.String(32), nullable=True),
    sa.Column("cells", sa.Integer, nullable=True),
    sa.Column("suppressed", sa.Integer, nullable=True),
)


# Outcomes per statement on a SQLite file: a value per column each, within the 999 an older SQLite binds.
_OUTCOMES_PER_STATEMENT = 999 // len(outcomes.c)
_OUTCOME_COLUMNS = [c.name for c in outcomes.c]
_OUTCOME_ROW = "(" + ", ".join("?" * len(_OUTCOME_COLUMNS)) + ")"
_OUTCOME_UPSERT = (
    f"INSERT INTO {outcomes.name} ({', '.join(_OUTCOME_COLUMNS)}) VALUES {{rows}} ON CONFLICT (request_id) "
    "DO UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in _OUTCOME_COLUMNS if n != "request_id")
)
# The same upsert where a release already stored stands (`record_outcome`'s `replace_release`).
_OUTCOME_UPSERT_UNLESS_RELEASED = _OUTCOME_UPSERT + f" WHERE {outcomes.name}.outcome <> 'released'"

withdrawals = sa.Table(
    "withdrawals",
    metadata,
    sa.Column("dataset", sa.String(256), primary_key=True),
    sa.Column("key_context", sa.String(256), primary_key=True),
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
)

policy_record = sa.Table(
    "policy_record",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # one row: POLICY_RECORD_ID
    sa.Column("log_index", sa.BigInteger, nullable=True),
    sa.Column("bundle_digest", sa.String(64), nullable=True),
    sa.Column("pending_from", sa.BigInteger, nullable=True),
    sa.Column("pending", sa.Integer, nullable=False, server_default="0"),
)
POLICY_RECORD_ID = 1


@dataclass(frozen=True)
class PolicyRecord:
    """Where the newest `policy.changed` this site appended to its audit log landed, so that a start need
    not read the log back to it (gateway.runtime). The log is the truth: the entry is read at `log_index`
    and this record trusted only if it is a `policy.changed` of `bundle_digest`."""

    log_index: int | None
    bundle_digest: str | None
    """The bundle that entry put in force (hex, no `sha256:`)."""
    pending_from: int | None
    """Set while a `policy.changed` may have been appended that this record does not name yet (a process
    stopped between the append and its note here, or an append that failed and may still land): the log
    size before the first such append, from where a start reads the log for a newer one."""


def utc_now_text(ago_s: float = 0.0) -> str:
    """Now (or `ago_s` seconds ago), to the second, as the state's rows record times and compare them, as
    text."""
    return (datetime.now(UTC) - timedelta(seconds=ago_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


STALE_CLAIM_S = 600.0
"""How long a steward's approval may run before its claim on the request is taken as lost."""


@dataclass(frozen=True)
class QueryStart:
    """What a query needs from the state before it runs: how often it was asked, and who withdrew."""

    asked: int
    """This asking included: the total count of this exact query by this researcher under the agreement.

    On a SQLite file it is read just after this asking is counted, so it may include an identical query
    counted at the same moment: never less than this asking's own place, so a limit can refuse too early
    when more identical queries than it allows arrive at once, never too late."""
    withdrawn: list[str]
    """Pseudonyms of the dataset's patients who withdrew consent, read in one statement: its length is
    what `GatewayState.withdrawn_count` said at that moment."""


class _DriverStatement:
    """A statement compiled once for one engine's dialect and run on the driver's own cursor.

    Every query writes its count and reads the withdrawals; through SQLAlchemy's connection, result and
    transaction objects those two statements cost several times what the database spends on them."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self._compiled = compiled
        self.sql = compiled.string
        self._order = compiled.positiontup  # None for a driver with named parameters

    def params(self, values: Mapping[str, Any]) -> Any:
        bound = self._compiled.construct_params(dict(values))
        return bound if self._order is None else tuple(bound[name] for name in self._order)


class _ThreadConnections:
    """One SQLite connection per thread in autocommit mode, for statements that are whole transactions."""

    def __init__(self, engine: sa.Engine) -> None:
        assert engine.url.database
        self._path = engine.url.database
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA synchronous=NORMAL")  # as the engine's connections (_sqlite_pragmas)
            with self._lock:
                self._opened.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()


@dataclass(frozen=True)
class StoredRequest:
    """A query the gateway keeps: waiting for a steward, or answered after approval."""

    request_id: str
    status: RequestStatus
    subject: str
    agreement: str
    dataset: str
    kind: str
    query_hash: str
    principal: dict[str, Any]
    spec: dict[str, Any]
    reasons: list[str]
    result: dict[str, Any] | None
    created_at: str
    updated_at: str
    decided_by: str | None


class GatewayState:
    """Access to the state database; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(url, hide_parameters=True)
        # SQLite takes one writer at a time, and a writer that finds the database locked sleeps in SQLite's
        # busy handler (1, 2, 5, 10 … ms): transactions of several statements take turns on locks instead,
        # which cost microseconds (a thread lock in the process, then flock between processes). A write that
        # is one statement (a query's count, request outcomes) needs no turn: SQLite holds its lock only
        # inside that one call. PostgreSQL locks rows and needs neither.
        self._thread_turn: threading.Lock | None = None
        self._process_turn: ProcessLock | None = None
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            self._thread_turn = threading.Lock()
            database = self._engine.url.database
            if database not in (None, "", ":memory:"):
                self._process_turn = ProcessLock(f"{database}-writer.lock")
        create_schema(self._engine, metadata)  # several workers may start on a new file at once
        self._counting = _ThreadConnections(self._engine) if self._process_turn is not None else None
        # The statements of every query, built once: their values are bound at execution, so SQLAlchemy
        # neither rebuilds nor re-keys a statement per request.
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        ended = insert(outcomes)
        replaced = {c.name: ended.excluded[c.name] for c in outcomes.c if c.name != "request_id"}
        self._record_outcome = ended.on_conflict_do_update(index_elements=["request_id"], set_=replaced)
        self._record_outcome_unless_released = ended.on_conflict_do_update(
            index_elements=["request_id"], set_=replaced, where=outcomes.c.outcome != "released"
        )
        dialect = self._engine.dialect
        counted = insert(query_counts).values(
            subject=sa.bindparam("subject"), agreement=sa.bindparam("agreement"),
            query_hash=sa.bindparam("query_hash"), count=1,
        )  # fmt: skip
        bump = counted.on_conflict_do_update(
            index_elements=["subject", "agreement", "query_hash"], set_={"count": query_counts.c.count + 1}
        )
        self._count_sql = _DriverStatement(bump.returning(query_counts.c.count), dialect)
        self._bump_sql = _DriverStatement(bump, dialect)
        q = query_counts.c
        self._read_count_sql = _DriverStatement(
            sa.select(q.count).where(
                q.subject == sa.bindparam("subject"),
                q.agreement == sa.bindparam("agreement"),
                q.query_hash == sa.bindparam("query_hash"),
            ),
            dialect,
        )
        w = withdrawals.c
        self._withdrawn_sql = _DriverStatement(
            sa.select(w.token).where(
                w.dataset == sa.bindparam("dataset"), w.key_context == sa.bindparam("key_context")
            ),
            dialect,
        )
        # Outcomes are written behind the requests, in batches, by one thread (started on first use).
        self._pending: list[_PendingOutcome] = []
        self._pending_changed = threading.Condition()
        self._flushing = threading.Lock()
        self._writer: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def _write_turn(self) -> Iterator[None]:
        """This process's and this thread's turn to write (SQLite: one writer at a time)."""
        if self._thread_turn is None:
            yield
            return
        with self._thread_turn:
            if self._process_turn is None:
                yield
            else:
                with self._process_turn.hold():
                    yield

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """One write transaction, committed on exit."""
        with self._write_turn(), self._engine.begin() as conn:
            yield conn

    def close(self) -> None:
        """Store the outcomes still waiting, stop their writer, and release the connection pool."""
        with self._pending_changed:
            self._closed = True
            self._pending_changed.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=10)
        self.flush_outcomes()
        if self._counting is not None:
            self._counting.close()
        self._engine.dispose()
        if self._process_turn is not None:
            self._process_turn.close()
            self._process_turn = None

    def count_query(self, subject: str, agreement: str, query_hash: str) -> int:
        """Count one more asking of this exact query by this researcher under this agreement; return the
        total so far."""
        return self.start_query(subject, agreement, query_hash).asked

    def start_query(
        self, subject: str, agreement: str, query_hash: str, withdrawals_of: tuple[str, str] | None = None
    ) -> QueryStart:
        """What every query asks of the state: `count_query`, and then `withdrawn` of the (dataset, key
        context) in `withdrawals_of` (none read without it)."""
        names = {"subject": subject, "agreement": agreement, "query_hash": query_hash}
        if self._counting is not None:
            # SQLite file: the count is an upsert without RETURNING, which SQLite runs and commits
            # (autocommit) inside the one call that steps it, GIL released throughout; the total is read
            # after it, which needs no lock in WAL mode. SQLite's write lock is so held only while SQLite
            # itself works. With RETURNING the row comes back before the statement ends, so the lock
            # stayed held while this thread waited to take the GIL back from the worker's other threads,
            # and so did the writers' turn around it, every worker's queries queuing behind (measured in
            # docs/queries.md). Writers meeting here wait in SQLite's busy handler, which a statement this
            # short rarely makes them do.
            conn = self._counting.connection()
            conn.execute(self._bump_sql.sql, self._bump_sql.params(names))
            rows = conn.execute(self._read_count_sql.sql, self._read_count_sql.params(names)).fetchall()
            if len(rows) != 1:  # the upsert left the row; a read of its key gives it
                raise RuntimeError("the query count upsert left no row")
            return QueryStart(int(rows[0][0]), self._withdrawn_tokens(conn.cursor(), withdrawals_of))
        counted = self._count_sql.params(names)
        with self._write_turn():
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    cursor.execute(self._count_sql.sql, counted)
                    counted_row = cursor.fetchone()
                    if counted_row is None:  # RETURNING gives the row it inserted or updated
                        raise RuntimeError("the query count upsert returned no row")
                    total = int(counted_row[0])
                    tokens = self._withdrawn_tokens(cursor, withdrawals_of)
                finally:
                    cursor.close()
                raw.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    raw.rollback()
                raise
            finally:
                raw.close()  # back to the pool
        return QueryStart(total, tokens)

    def _withdrawn_tokens(self, cursor: Any, withdrawals_of: tuple[str, str] | None) -> list[str]:
        """The withdrawn pseudonyms of (dataset, key context), read on a driver cursor; none without it."""
        if withdrawals_of is None:
            return []
        dataset, key_context = withdrawals_of
        read = self._withdrawn_sql.params({"dataset": dataset, "key_context": key_context})
        cursor.execute(self._withdrawn_sql.sql, read)
        return [row[0] for row in cursor.fetchall()]

    def record_outcome(
        self,
        request_id: str,
        *,
        subject: str,
        org: str,
        agreement: str,
        dataset: str,
        kind: str,
        outcome: Outcome,
        stage: str | None = None,
        cells: int | None = None,
        suppressed: int | None = None,
        replace_release: bool = True,
    ) -> None:
        """Remember how a request ended, for the steward's activity summary (upserts by request id; the
        later of two outcomes of one request wins). Without `replace_release`, a release of the request
        already recorded stands: an approved answer that left the site once stays released whatever a
        later collect of it meets.

        Written behind, within about 50 ms, in batches with other requests' outcomes by one thread of
        this process: a query does not wait for this write. The summary is operational; what happened is
        in the audit log. A crash loses at most the outcomes still waiting."""
        row = {
            "request_id": request_id, "at": utc_now_text(), "subject": subject, "org": org,
            "agreement": agreement, "dataset": dataset, "kind": kind, "outcome": outcome, "stage": stage,
            "cells": cells, "suppressed": suppressed,
        }  # fmt: skip
        with self._pending_changed:
            if self._closed:
                raise RuntimeError("the gateway state is closed")
            self._pending.append(_PendingOutcome(row, replace_release))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_outcomes, name="state-outcomes", daemon=True
                )
                self._writer.start()
            if len(self._pending) == 1:
                # Only the first outcome of a batch wakes the writer: it then waits out the delay anyway,
                # and waking a thread per request costs more than the row.
                self._pending_changed.notify()

    def flush_outcomes(self) -> None:
        """Store every outcome waiting now (the activity summary calls this before it reads)."""
        with self._flushing:
            with self._pending_changed:
                rows, self._pending = self._pending, []
            if not rows:
                return
            plain, unless_released = _latest_outcomes(rows)
            try:
                if self._counting is not None:
                    file = self._counting.connection()
                    self._store_outcomes(file, plain, _OUTCOME_UPSERT)
                    self._store_outcomes(file, unless_released, _OUTCOME_UPSERT_UNLESS_RELEASED)
                else:
                    with self._writing() as conn:
                        if plain:
                            conn.execute(self._record_outcome, plain)
                        if unless_released:
                            conn.execute(self._record_outcome_unless_released, unless_released)
            except Exception as exc:
                # Keep them for the next attempt, the newest first should the database stay unavailable.
                with self._pending_changed:
                    self._pending[:0] = rows
                    del self._pending[: max(0, len(self._pending) - _OUTCOMES_KEPT)]
                raise exc from None

    @staticmethod
    def _store_outcomes(conn: sqlite3.Connection, rows: list[dict[str, Any]], upsert: str) -> None:
        """Upsert outcomes into a SQLite file as statements of many rows, each committed by the one call
        that runs it (autocommit): SQLite's write lock is held only while SQLite works, never while this
        thread waits for the GIL, so every worker's query counts (`start_query`) meet it only for that
        long. A transaction of one statement per row held it across a wait for the GIL after each row.

        The text is the upsert `_record_outcome` runs on other databases, spelled here once from the table's
        columns: SQLAlchemy's compile of a multi-row upsert took 1.8 ms for twelve rows, a few per cent of a
        worker's core at 20 batches a second. `rows` hold one outcome per request (`_latest_outcomes`)."""
        for start in range(0, len(rows), _OUTCOMES_PER_STATEMENT):
            chunk = rows[start : start + _OUTCOMES_PER_STATEMENT]
            sql = upsert.format(rows=", ".join([_OUTCOME_ROW] * len(chunk)))
            conn.execute(sql, [row[n] for row in chunk for n in _OUTCOME_COLUMNS])

    def _write_outcomes(self) -> None:
        while True:
            with self._pending_changed:
                while not self._pending and not self._closed:
                    self._pending_changed.wait()
                if self._closed:
                    return  # close() stores what is left
                # Let the batch grow for a moment: one transaction for many requests.
                self._pending_changed.wait_for(lambda: self._closed, timeout=_OUTCOME_DELAY_S)
            try:
                self.flush_outcomes()
            except Exception as exc:  # noqa: BLE001 - the thread must go on; the rows wait for the next try
                log.error("state: storing request outcomes failed (%s)", type(exc).__name__)
                with self._pending_changed:
                    self._pending_changed.wait_for(lambda: self._closed, timeout=1.0)

    def activity(self, since: str) -> dict[str, Any]:
        """What was released and refused since a time: per agreement, dataset, kind and outcome, and the
        researchers with the most refusals (a burst of refusals can be an attempt to isolate individuals)."""
        self.flush_outcomes()
        o = outcomes.c
        with self._engine.connect() as conn:
            groups = conn.execute(
                sa.select(o.agreement, o.dataset, o.kind, o.outcome, sa.func.count().label("requests"),
                          sa.func.coalesce(sa.func.sum(o.suppressed), 0).label("suppressed_cells"))
                .where(o.at >= since)
                .group_by(o.agreement, o.dataset, o.kind, o.outcome)
                .order_by(o.agreement, o.dataset, o.kind, o.outcome)
            ).all()  # fmt: skip
            refusals = conn.execute(
                sa.select(o.subject, o.org, sa.func.count().label("refused"))
                .where(o.at >= since, o.outcome == "refused")
                .group_by(o.subject, o.org)
                .order_by(sa.func.count().desc())
                .limit(20)
            ).all()
        return {
            "since": since,
            "by_agreement": [dict(r._mapping) for r in groups],
            "most_refused": [dict(r._mapping) for r in refusals],
        }

    def add_withdrawals(self, dataset: str, key_context: str, tokens: list[str]) -> int:
        """Record patients (by pseudonym) who withdrew consent; returns how many were new.

        Tokens are kept in the spelling `pseudonym` writes; a patient already recorded under the plain
        32-hex spelling of earlier versions is not new."""
        if not tokens:
            return 0
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        w = withdrawals.c
        fresh = sorted({canonical_token(t) for t in tokens})
        with self._writing() as conn:
            # Stamped once the writers' turn is held, not before waiting for it. Collects compare counts
            # (`withdrawn_count`), not these times.
            at = utc_now_text()
            before = self._withdrawn_count(conn, dataset, key_context)
            for start in range(0, len(fresh), _ROWS_PER_STATEMENT):
                chunk = fresh[start : start + _ROWS_PER_STATEMENT]
                stored = conn.execute(
                    sa.select(w.token).where(
                        w.dataset == dataset,
                        w.key_context == key_context,
                        w.token.in_(token_spellings(chunk)),
                    )
                ).scalars()
                known = {canonical_token(t) for t in stored}
                rows = [
                    {"dataset": dataset, "key_context": key_context, "token": t, "at": at}
                    for t in chunk
                    if t not in known
                ]
                if rows:
                    conn.execute(insert(withdrawals).values(rows).on_conflict_do_nothing())
            return self._withdrawn_count(conn, dataset, key_context) - before

    def withdrawn_count(self, dataset: str, key_context: str) -> int:
        """How many patients of the dataset withdrew consent. Withdrawals are never removed, so the count
        only grows: an answer whose run applied `n` of them (`QueryStart.withdrawn`) misses none while the
        count is `n`, whatever the clocks of the processes that recorded them said."""
        with self._engine.connect() as conn:
            return self._withdrawn_count(conn, dataset, key_context)

    @staticmethod
    def _withdrawn_count(conn: sa.Connection, dataset: str, key_context: str) -> int:
        w = withdrawals.c
        query = sa.select(sa.func.count()).where(w.dataset == dataset, w.key_context == key_context)
        return int(conn.execute(query).scalar_one())

    def withdrawn(self, dataset: str, key_context: str) -> list[str]:
        """Pseudonyms of the patients of a dataset who withdrew consent."""
        read = self._withdrawn_sql.params({"dataset": dataset, "key_context": key_context})
        with self._engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql(self._withdrawn_sql.sql, read)]

    def policy_record(self) -> PolicyRecord | None:
        """The site's note of its newest `policy.changed` entry; None when none was noted (a new state
        database, or one from a version that kept none)."""
        p = policy_record.c
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(p.log_index, p.bundle_digest, p.pending_from).where(p.id == POLICY_RECORD_ID)
            ).first()
        if row is None:
            return None
        return PolicyRecord(row.log_index, row.bundle_digest, row.pending_from)

    def policy_change_pending(self, log_size: int) -> None:
        """A `policy.changed` is about to be appended to a log of `log_size` entries: until
        `policy_change_noted` says where it landed, a start reads the log from there. The earliest such
        size is kept while an earlier append is still unaccounted for (one that failed, and may yet land).
        Call it under the policy folder's lock, as every writer of this record does."""
        p = policy_record.c
        with self._writing() as conn:
            row = conn.execute(sa.select(p.pending_from, p.pending).where(p.id == POLICY_RECORD_ID)).first()
            if row is None:
                conn.execute(
                    policy_record.insert().values(id=POLICY_RECORD_ID, pending_from=log_size, pending=1)
                )
                return
            start = log_size if row.pending_from is None else min(row.pending_from, log_size)
            conn.execute(
                policy_record.update()
                .where(p.id == POLICY_RECORD_ID)
                .values(pending_from=start, pending=row.pending + 1)
            )

    def policy_change_noted(self, log_index: int, bundle_digest: str, *, settled: bool = False) -> None:
        """The `policy.changed` announced by `policy_change_pending` landed at `log_index` and put
        `bundle_digest` in force. The log is read from `pending_from` no more once every announced append
        is accounted for; with `settled` (a start that read the log up to its end), at once."""
        p = policy_record.c
        with self._writing() as conn:
            row = conn.execute(sa.select(p.pending).where(p.id == POLICY_RECORD_ID)).first()
            left = 0 if settled or row is None else max(0, row.pending - 1)
            noted = {
                "log_index": log_index,
                "bundle_digest": bundle_digest,
                "pending": left,
                **({"pending_from": None} if left == 0 else {}),
            }
            if row is None:
                conn.execute(policy_record.insert().values(id=POLICY_RECORD_ID, **noted))
            else:
                conn.execute(policy_record.update().where(p.id == POLICY_RECORD_ID).values(**noted))

    def save_request(self, request: StoredRequest) -> None:
        """Insert a new request."""
        with self._writing() as conn:
            conn.execute(requests.insert().values(**_row(request)))

    def update_request(
        self,
        request_id: str,
        *,
        expect: RequestStatus,
        status: RequestStatus,
        reasons: list[str],
        result: dict[str, Any] | None,
        decided_by: str | None,
        claimed_by: str | None = None,
    ) -> bool:
        """Move a request from `expect` to `status`; False when another steward got there first. With
        `claimed_by`, only if that steward's claim still holds it (not one put back in the queue and taken
        by another since)."""
        where = [requests.c.request_id == request_id, requests.c.status == expect]
        if claimed_by is not None:
            where.append(requests.c.decided_by == claimed_by)
        with self._writing() as conn:
            done = conn.execute(
                requests.update()
                .where(*where)
                .values(
                    status=status,
                    reasons=json.dumps(reasons),
                    result=json.dumps(result) if result is not None else None,
                    decided_by=decided_by,
                    updated_at=utc_now_text(),
                )
            )
        return bool(done.rowcount)

    def get_request(self, request_id: str) -> StoredRequest | None:
        """One request by id."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.request_id == request_id)).first()
        return _request(row._mapping) if row is not None else None

    def list_requests(
        self, status: RequestStatus | None = None, limit: int = 500, offset: int = 0
    ) -> list[StoredRequest]:
        """Requests, oldest first (of one status when given): a page of `limit` from `offset`."""
        query = sa.select(requests).order_by(requests.c.created_at, requests.c.request_id)
        if status is not None:
            query = query.where(requests.c.status == status)
        with self._engine.connect() as conn:
            return [_request(r._mapping) for r in conn.execute(query.limit(limit).offset(offset))]

    def release_stale_claims(self, older_than_s: float = STALE_CLAIM_S) -> int:
        """Put back in the queue requests a steward's approval left `deciding` longer than `older_than_s`
        (the gateway stopped during the run): a steward decides them again. How many were put back."""
        cutoff = utc_now_text(ago_s=older_than_s)
        with self._writing() as conn:
            done = conn.execute(
                requests.update()
                .where(requests.c.status == "deciding", requests.c.updated_at < cutoff)
                .values(status="pending_approval", decided_by=None, updated_at=utc_now_text())
            )
        return int(done.rowcount or 0)


@dataclass(frozen=True)
class _PendingOutcome:
    """An outcome waiting for the background writer (`GatewayState.record_outcome`)."""

    row: dict[str, Any]
    replace_release: bool


def _latest_outcomes(
    pending: list[_PendingOutcome],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows to store of a batch, one per request, the later of two outcomes winning unless it leaves a
    release standing: those that replace whatever is stored, and those that replace all but a release."""
    latest: dict[str, _PendingOutcome] = {}
    for outcome in pending:
        held = latest.get(outcome.row["request_id"])
        if held is not None and held.row["outcome"] == "released" and not outcome.replace_release:
            continue
        latest[outcome.row["request_id"]] = outcome
    plain = [o.row for o in latest.values() if o.replace_release]
    unless_released = [o.row for o in latest.values() if not o.replace_release]
    return plain, unless_released


def new_request(
    request_id: str,
    subject: str,
    principal: dict[str, Any],
    spec: dict[str, Any],
    query_hash: str,
    reasons: list[str],
) -> StoredRequest:
    """A request entering the approval queue; `subject` is whose it is (gateway.pipeline.owner), as every
    later look-up and the steward's self-approval check spell it."""
    now = utc_now_text()
    return StoredRequest(
        request_id=request_id,
        status="pending_approval",
        subject=subject,
        agreement=str(spec["agreement"]),
        dataset=str(spec["dataset"]),
        kind=str(spec["kind"]),
        query_hash=query_hash,
        principal=principal,
        spec=spec,
        reasons=reasons,
        result=None,
        created_at=now,
        updated_at=now,
        decided_by=None,
    )


def _row(r: StoredRequest) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "status": r.status,
        "subject": r.subject,
        "agreement": r.agreement,
        "dataset": r.dataset,
        "kind": r.kind,
        "query_hash": r.query_hash,
        "principal": json.dumps(r.principal),
        "spec": json.dumps(r.spec),
        "reasons": json.dumps(r.reasons),
        "result": json.dumps(r.result) if r.result is not None else None,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "decided_by": r.decided_by,
    }


def _request(m: Any) -> StoredRequest:
    return StoredRequest(
        request_id=m["request_id"],
        status=m["status"],
        subject=m["subject"],
        agreement=m["agreement"],
        dataset=m["dataset"],
        kind=m["kind"],
        query_hash=m["query_hash"],
        principal=json.loads(m["principal"]),
        spec=json.loads(m["spec"]),
        reasons=json.loads(m["reasons"]),
        result=json.loads(m["result"]) if m["result"] is not None else None,
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        decided_by=m["decided_by"],
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    sqlite_wal(cursor)
    # NORMAL in WAL mode survives a crash of the gateway, not of the machine: the state is operational
    # (queues, counters); what happened is recorded durably in the audit log, which syncs every append.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
