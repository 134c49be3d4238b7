"""SQLAlchemy storage of the log: tables, engines, and the database-level lock every append takes.

SQLite runs in WAL mode with `synchronous=FULL` (a commit is on disk when it returns); writers open their
transactions with `BEGIN IMMEDIATE`, so the head row is read and written under the database's write lock.
PostgreSQL writers lock the head row with `SELECT … FOR UPDATE`. Readers never take the write lock.
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from audit.errors import StorageError
from audit.merkle import NodeKey

metadata = sa.MetaData()

entries = sa.Table(
    "audit_entry",
    metadata,
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("leaf", sa.LargeBinary(32), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)
# Inner nodes (level ≥ 1) of every complete perfect subtree: proofs read O(log n) of them.
nodes = sa.Table(
    "audit_node",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)
# One row: the log's size, last leaf hash and compact range; its lock serializes writers.
head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("origin", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("last_leaf", sa.LargeBinary(32), nullable=False),
    sa.Column("frontier", sa.LargeBinary, nullable=False),
)
checkpoints = sa.Table(
    "audit_checkpoint",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("signed_at", sa.Float, nullable=False),
)
cosignatures = sa.Table(
    "audit_cosignature",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("witness", sa.String(255), primary_key=True),
    sa.Column("line", sa.Text, nullable=False),
)

HEAD_ID = 1
# Key of the PostgreSQL advisory lock that serializes schema creation between processes.
_SCHEMA_LOCK = 0x66656467617465


class ProcessLock:
    """An exclusive advisory lock on a file beside a SQLite database, taken around write transactions.

    SQLite makes a blocked writer poll (its busy handler sleeps 1, 2, 5 … 100 ms), so writers in several
    processes would mostly sleep while the lock sits free. Blocked in flock, they wake the moment it is
    released. BEGIN IMMEDIATE still guarantees correctness; this lock only removes the polling. The
    kernel drops it when its process dies, so a killed writer never leaves it held.
    """

    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the writer lock file {path}: {exc.strerror}") from None

    @contextmanager
    def hold(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Engines:
    """A writer engine (its transactions lock the database) and a reader engine (they never do)."""

    writer: Engine
    reader: Engine
    process_lock: ProcessLock | None = None

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold this around a write transaction (a no-op where the database blocks writers well)."""
        return self.process_lock.hold() if self.process_lock is not None else nullcontext()

    def dispose(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()
        if self.process_lock is not None:
            self.process_lock.close()


def sqlite_wal(cursor: Any) -> None:
    """Put a SQLite file in WAL mode. Several workers starting on a new file can find each other's locks,
    and SQLite fails that switch at once rather than wait where waiting could deadlock: it is retried for
    up to about five seconds (once one worker has switched the file, the others find it in WAL)."""
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (1 + random.random()))  # noqa: S311 - jitter, not a secret


_WAL_ATTEMPTS = 300


def _sqlite_engine(url: sa.URL, begin: str | None) -> Engine:
    memory = url.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = sa.create_engine(url, hide_parameters=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN IMMEDIATE below is what really runs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        if not memory:
            sqlite_wal(cur)
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    if begin is not None:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            _on_cursor(conn, begin, ())

    return engine


def make_engines(url: str) -> Engines:
    """Engines for a SQLAlchemy URL (sqlite:///…, postgresql+psycopg://…)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        writer = _sqlite_engine(parsed, "BEGIN IMMEDIATE")
        if parsed.database in (None, "", ":memory:"):
            return Engines(writer, writer)
        # Readers run each statement on its own (autocommit): every row they read is immutable once
        # written, so they need no snapshot and never hold up a writer.
        return Engines(writer, _sqlite_engine(parsed, None), ProcessLock(f"{parsed.database}-writer.lock"))
    engine = sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    return Engines(engine, engine)


def create_schema(
    engine: Engine, meta: sa.MetaData, initialize: Callable[[Connection], None] | None = None
) -> None:
    """Create tables (and initial rows) once, even when several processes start together.

    IF NOT EXISTS, not a look then a CREATE: on SQLite two processes can both look before either creates
    (PostgreSQL also takes an advisory lock, as its IF NOT EXISTS can still race on the catalog)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
        for table in meta.sorted_tables:
            conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
        if initialize is not None:
            initialize(conn)


def read_head(conn: Connection) -> Any:
    """Read the head row without locking."""
    stmt = sa.select(head.c.origin, head.c.size, head.c.last_leaf, head.c.frontier).where(
        head.c.id == HEAD_ID
    )
    return conn.execute(stmt).one()


def _marks(conn: Connection, n: int) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * n)


def fetch_nodes(conn: Connection, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
    """Hashes of the given perfect subtrees in one query: leaves from the entry table, inner nodes from
    the node table. Plain driver SQL: at a few dozen keys, building SQLAlchemy expressions would cost
    more than the database does."""
    wanted = set(keys)
    leaves = sorted(i for level, i in wanted if level == 0)
    inner = sorted((level, i) for level, i in wanted if level > 0)
    parts: list[str] = []
    params: list[int] = []
    if inner:
        pair = (
            "(level = ? AND idx = ?)" if conn.dialect.paramstyle == "qmark" else "(level = %s AND idx = %s)"
        )
        parts.append(f"SELECT level, idx, hash FROM {nodes.name} WHERE " + " OR ".join([pair] * len(inner)))
        params.extend(v for key in inner for v in key)
    if leaves:
        parts.append(f"SELECT 0, idx, leaf FROM {entries.name} WHERE idx IN ({_marks(conn, len(leaves))})")
        params.extend(leaves)
    if not parts:
        return {}
    rows = conn.exec_driver_sql(" UNION ALL ".join(parts), tuple(params))
    return {(int(level), int(idx)): bytes(h) for level, idx, h in rows}


@dataclass(frozen=True)
class HeadState:
    """The head row: size, last leaf hash and the packed compact range."""

    size: int
    last_leaf: bytes
    frontier: bytes


def _on_cursor(conn: Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """Run one statement on a cursor of `conn`'s DBAPI connection, in its transaction; its rows, if any.

    For the writer's statements, which are plain driver SQL already: SQLAlchemy's execution around each
    (an execution context, a result, event dispatch) cost more than SQLite's own work, about 150 µs of a
    600 µs commit of four entries. A driver error is raised as SQLAlchemy would raise it."""
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description is not None else []
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def lock_head(conn: Connection) -> HeadState:
    """Read the head row under the writers' lock (SQLite already holds it since BEGIN IMMEDIATE)."""
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"SELECT size, last_leaf, frontier FROM {head.name} WHERE id = {mark}{lock}"
    rows = _on_cursor(conn, sql, (HEAD_ID,))
    if not rows:
        raise sa.exc.NoResultFound("the log has no head row")
    size, last_leaf, frontier = rows[0]  # id is the primary key: one row at most
    return HeadState(int(size), bytes(last_leaf), bytes(frontier))


ROWS_PER_INSERT: Final = 300
"""Rows per INSERT statement: 3 parameters each, within the 999 an older SQLite binds at most."""


def _insert_rows(conn: Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> None:
    row = f"({_marks(conn, 3)})"
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        _on_cursor(conn, insert + ", ".join([row] * len(chunk)), tuple(v for r in chunk for v in r))


def write_batch(
    conn: Connection,
    entry_rows: list[tuple[int, bytes, bytes]],
    node_rows: list[tuple[int, int, bytes]],
    new_head: HeadState,
) -> None:
    """Insert entries and inner nodes and move the head, in plain driver SQL.

    Rows go in as multi-row INSERTs of up to `ROWS_PER_INSERT`: an executemany steps the statement once
    per row, and each step gives up the GIL, which the committing thread must then wait to take back
    while every worker's commits wait on the writers' lock it holds."""
    _insert_rows(conn, f"INSERT INTO {entries.name} (idx, leaf, body) VALUES ", entry_rows)
    _insert_rows(conn, f"INSERT INTO {nodes.name} (level, idx, hash) VALUES ", node_rows)
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    _on_cursor(
        conn,
        f"UPDATE {head.name} SET size = {mark}, last_leaf = {mark}, frontier = {mark} WHERE id = {mark}",
        (new_head.size, new_head.last_leaf, new_head.frontier, HEAD_ID),
    )
