"""Run a compiled query on the store and shape its answer as a typed pandas DataFrame.

`store_engine` opens the store for queries. A DuckDB file is opened read-only, so several gateway
processes (uvicorn workers) can read it at once. DuckDB locks a file per process: while any process holds
it open, even read-only, no other process can open it for writing, and inside one process a read-only
and a read-write connection to one file cannot coexist. `hold_open=True` (the default) pools
connections: ~1 ms per query, but an ingest into the same file must wait until the engine is disposed.
`hold_open=False` opens the file for each query and closes it after (~20 ms more per query), so an
ingest in another process only waits for the queries running at that moment; a query that finds an
ingest holding the file fails with ExecutionError ("store unavailable") and should be retried or refused.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final

import duckdb
import pandas as pd
import sqlalchemy as sa
from pandas.api.types import pandas_dtype

from gateway.query import duckdb_dialect
from gateway.query.compile import (
    MAX_GROUPS,
    TOGETHER_KINDS,
    CompiledQuery,
    counted_together,
    together_values,
)
from gateway.query.deadline import bound_duckdb, timed_out
from gateway.query.errors import ExecutionError, ValueMismatch
from gateway.query.population import PopulationCache
from pseudonymize.disclosure import MAX_GRID_CELLS, TableTooLarge

log = logging.getLogger(__name__)


class QueryOutcome:
    """The main result (group columns first, then the kind's statistics) and the query-set sizes.

    `frame` is the typed DataFrame; it may be given as the function that builds it, run once when first
    asked. `plain`, when set, holds the same table as Python values per column, in the frame's row order,
    None for a missing value: a count answer small enough to release without pandas never builds `frame`.
    A query with more groups than MAX_GROUPS has neither: asking for its `frame` raises TableTooLarge, the
    refusal disclosure control gives any table of more than MAX_GRID_CELLS cells, once it has checked the
    query-set sizes (which such an outcome holds as any other does).
    """

    __slots__ = ("_build", "_frame", "plain", "population", "selected")

    def __init__(
        self,
        frame: pd.DataFrame | Callable[[], pd.DataFrame],
        selected: int,
        population: int,
        *,
        plain: dict[str, list[Any]] | None = None,
    ) -> None:
        self._frame = frame if isinstance(frame, pd.DataFrame) else None
        self._build = None if isinstance(frame, pd.DataFrame) else frame
        self.selected = selected
        """Rows the filters and the consent filter keep."""
        self.population = population
        """Rows the consent filter keeps: `population - selected` is the complement of the query set."""
        self.plain = plain

    @property
    def frame(self) -> pd.DataFrame:
        """The result as a typed DataFrame, sorted by the group columns (and bin), missing values last."""
        if self._frame is None:
            assert self._build is not None
            self._frame, self._build = self._build(), None
        return self._frame


def store_engine(store_url: str, *, hold_open: bool = True, timeout_s: float | None = None) -> sa.Engine:
    """An engine for querying the store at `store_url` (`duckdb:///path` or any SQLAlchemy URL).

    With `timeout_s`, a DuckDB connection held longer is interrupted (gateway.query.deadline) and a
    PostgreSQL statement that runs longer is cancelled by the server (`statement_timeout`)."""
    pool: dict[str, Any] = {} if hold_open else {"poolclass": sa.pool.NullPool}
    try:
        if store_url.startswith("duckdb:///"):
            path = store_url.removeprefix("duckdb:///")
            read_only = {"read_only": True} if path not in ("", ":memory:") else {}
            url = sa.make_url(store_url).set(drivername=duckdb_dialect.DRIVER_NAME)
            duck = sa.create_engine(url, connect_args=read_only, hide_parameters=True, **pool)
            if timeout_s is not None:
                bound_duckdb(duck, timeout_s)
            return duck
        engine = sa.create_engine(store_url, pool_pre_ping=hold_open, hide_parameters=True, **pool)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ExecutionError(f"cannot use the store URL: {type(exc).__name__}") from None
    if engine.dialect.name == "postgresql":
        sa.event.listen(engine, "connect", functools.partial(_postgres_session, timeout_s=timeout_s))
        # Queries only read; a read-only transaction makes that the database's rule too.
        return engine.execution_options(postgresql_readonly=True)
    return engine


def _postgres_session(dbapi_conn: Any, _record: Any, *, timeout_s: float | None) -> None:
    """Set a new PostgreSQL connection's TimeZone to UTC, whatever the server's or the URL's, and its
    `statement_timeout` to the site's budget.

    PostgreSQL reads a `timestamp without time zone` compared with a zoned value in the session's zone,
    and a table may hold a zoned column so, as its UTC wall time (the store writes `timestamptz` for one,
    but a table laid out otherwise can be queried too): in UTC that comparison is the instants'. The
    answer must not depend on a setting of the server."""
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
            if timeout_s is not None:
                cursor.execute(f"SET statement_timeout = {max(1, round(timeout_s * 1000))}")
    finally:
        dbapi_conn.autocommit = autocommit


ONE_ROW_GROUP: Final = 122_880
"""DuckDB's row group size, which the store is written with: DuckDB splits a scan into tasks by row group,
so a table of no more rows is scanned by one thread whatever its `threads` setting."""


def single_thread_engine(store_url: str, *, timeout_s: float | None = None) -> sa.Engine | None:
    """For a DuckDB store file, an engine for tables of one row group (`ONE_ROW_GROUP` rows or fewer):
    each connection is an in-memory DuckDB on one thread that attaches the store read-only. None for any
    other store.

    Such a table gains nothing from DuckDB's other threads, yet on the store's own instance every query
    still hands its tasks to them and wakes them: a small query cost about 0.2 ms more CPU in the calling
    thread and 0.3-0.4 ms in DuckDB's thread than on one thread. `threads` is a setting of a whole
    DuckDB instance, and one process cannot open a file twice with different settings, hence the attach."""
    if not store_url.startswith("duckdb:///"):
        return None
    path = sa.make_url(store_url).database
    if path in (None, "", ":memory:"):
        return None
    url = sa.make_url("duckdb:///:memory:").set(drivername=duckdb_dialect.DRIVER_NAME)
    engine = sa.create_engine(url, connect_args={"config": {"threads": 1}}, hide_parameters=True)
    attach = "ATTACH '{}' AS store (READ_ONLY)".format(path.replace("'", "''"))

    @sa.event.listens_for(engine, "connect")
    def _attach(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(attach)
        dbapi_conn.execute("USE store")

    if timeout_s is not None:
        bound_duckdb(engine, timeout_s)
    return engine


def execute(
    engine: sa.Engine, compiled: CompiledQuery, *, populations: PopulationCache | None = None
) -> QueryOutcome:
    """Run `compiled` and its query-set-size counts; ExecutionError (without SQL values) on any failure.

    Without a cache: the main statement, then `sizes` (selected and population in one scan). With a
    cache that knows the population: count and crosstab take `selected` from their own cells (every
    selected row is in exactly one cell, missing values included) and run one statement; the other kinds
    run `selected` beside the main statement. Version tables never change after publication, so the
    statements see the same rows."""
    key = PopulationCache.key(engine, compiled.population) if populations is not None else None
    population = populations.get(key) if populations is not None and key is not None else None
    try:
        with engine.connect() as conn:
            run = _runner(conn, compiled)
            rows = run(lambda: compiled.main, "main")
            # The store gave at most one group more than MAX_GROUPS (`_runner`).
            too_many = len(rows) > MAX_GROUPS
            if population is None:
                selected, population = (int(v) for v in _one(run(lambda: compiled.sizes, "sizes")))
                if populations is not None and key is not None:
                    populations.put(key, population)
            elif compiled.kind in ("count", "crosstab") and not too_many:
                selected = sum(int(r[-1]) for r in rows)
            else:
                (selected_value,) = _one(run(lambda: compiled.selected, "selected"))
                selected = int(selected_value)
    except (sa.exc.SQLAlchemyError, duckdb.Error) as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        if isinstance(cause, duckdb.ConversionException) or isinstance(exc, sa.exc.DataError):
            raise ValueMismatch() from None
        raise ExecutionError(store_failure(exc)) from None
    if too_many:
        return QueryOutcome(_too_many_groups, selected, population)
    return _outcome(compiled, rows, selected, population)


def _too_many_groups() -> pd.DataFrame:
    """The frame of a query with more groups than MAX_GROUPS: refused as disclosure control refuses a grid
    of more than MAX_GRID_CELLS cells (grid.build_grid), which its groups alone would make."""
    raise TableTooLarge(MAX_GRID_CELLS, to_hide=False)


def together_key(engine: sa.Engine, compiled: CompiledQuery) -> Hashable | None:
    """Queries with one key can run as one statement (`execute_together`); None for a query that runs
    alone: a kind other than count and crosstab, a query without filter values (queries of its shape are
    all the same query), or a store other than DuckDB."""
    if (
        compiled.kind not in TOGETHER_KINDS
        or compiled.shape is None
        or not compiled.values
        or not isinstance(engine.dialect, duckdb_dialect.QueryDuckDBDialect)
    ):
        return None
    return (id(engine), compiled.shape)


def execute_together(
    engine: sa.Engine, queries: Sequence[CompiledQuery], *, populations: PopulationCache
) -> list[QueryOutcome | Exception]:
    """Run queries of one `together_key`: the outcome of each, or what it failed with (a QueryError as
    `execute` raises it), in order.

    Two or more whose population the cache knows run as one statement (`counted_together`), so DuckDB
    binds, plans and optimizes once for all of them. Should that statement fail, or give more groups than
    MAX_GROUPS (which one of its queries alone may not have), each query runs alone, so that a failure or
    a refusal is reported for the query that caused it and for no other."""
    if len(queries) > 1:
        population = populations.get(PopulationCache.key(engine, queries[0].population))
        if population is not None:
            try:
                shared = _counted_together(engine, queries, population)
            except Exception as exc:  # noqa: BLE001 - each query alone below finds and reports its own failure
                log.info("%d queries of one shape ran one by one: %s", len(queries), type(exc).__name__)
            else:
                if shared is not None:
                    return shared
                log.info("%d queries of one shape ran one by one: too many groups", len(queries))
    outcomes: list[QueryOutcome | Exception] = []
    for compiled in queries:
        try:
            outcomes.append(execute(engine, compiled, populations=populations))
        except Exception as exc:  # noqa: BLE001 - each query's own failure, for its own refusal
            outcomes.append(exc)
    return outcomes


def _counted_together(
    engine: sa.Engine, queries: Sequence[CompiledQuery], population: int
) -> list[QueryOutcome | Exception] | None:
    """The outcome of each query from one statement; None when it has more groups than MAX_GROUPS (it has
    every group of the consented rows, with or without a query's rows), since it then holds only some."""
    first = queries[0]
    with engine.connect() as conn:
        rows = duckdb_dialect.run(
            conn,
            lambda: counted_together(queries),
            shape=(first.shape, "together", len(queries)),
            values=together_values(queries),
            at_most=MAX_GROUPS + 1,
        )
    if len(rows) > MAX_GROUPS:
        return None
    groups = len(first.output) - 1
    outcomes: list[QueryOutcome | Exception] = []
    for i, compiled in enumerate(queries):
        # A group appears only where the query kept rows; an aggregate without groups is one row, zero or not.
        own = [(*row[:groups], row[groups + i]) for row in rows if row[groups + i] or not groups]
        outcomes.append(_outcome(compiled, own, sum(int(r[-1]) for r in own), population))
    return outcomes


def _runner(
    conn: sa.Connection, compiled: CompiledQuery
) -> Callable[[Callable[[], sa.Select[Any]], str], Sequence[Sequence[Any]]]:
    """How `conn` runs one of `compiled`'s selects (given as the function that builds it, and named by its
    part: main, sizes or selected): DuckDB's own connection for the query dialect, its text kept per
    shape and part, so a kept text runs without the select being built (duckdb_dialect.run), and `main`
    fetching no more than MAX_GROUPS + 1 rows; SQLAlchemy's execution for any other store, where a grouped
    `main` has that LIMIT (compile.MAX_GROUPS)."""
    if isinstance(conn.dialect, duckdb_dialect.QueryDuckDBDialect):

        def run(statement: Callable[[], sa.Select[Any]], part: str) -> Sequence[Sequence[Any]]:
            shape = (compiled.shape, part) if compiled.shape is not None else None
            at_most = MAX_GROUPS + 1 if part == "main" else None
            return duckdb_dialect.run(conn, statement, shape=shape, values=compiled.values, at_most=at_most)

        return run
    return lambda statement, part: conn.execute(statement()).all()


def _one(rows: Sequence[Sequence[Any]]) -> Sequence[Any]:
    """The single row of an aggregate without GROUP BY."""
    if len(rows) != 1:
        raise ExecutionError(f"the store returned {len(rows)} rows where one was expected")
    return rows[0]


def store_failure(exc: BaseException) -> str:
    """Why the store failed to run a statement, for a refusal's reasons.

    Driver messages can quote bound values and file paths: only class names leave this function."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    if timed_out(exc):
        return "the query ran past this site's time limit for a query's work in the store; narrow it"
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or isinstance(
        cause, duckdb.IOException | duckdb.ConnectionException
    ):
        return f"store unavailable ({type(cause).__name__})"
    if isinstance(exc, sa.exc.TimeoutError):
        return "store unavailable (connection pool exhausted)"
    return f"the store could not run the query ({type(cause).__name__})"


# Result dtypes whose store values, checked one by one, are already what the typed frame holds: a
# missing value is None. Ints stay within 2**53 because pandas may pass a column through float64.
_PLAIN_DTYPES: Final = {"int64": int, "Int64": int, "boolean": bool, "string": str, "float64": float}
_EXACT_INT: Final = 2**53


def _outcome(compiled: CompiledQuery, rows: Sequence[Any], selected: int, population: int) -> QueryOutcome:
    """Counts keep their rows as Python values and build the frame on demand; other kinds build it now."""
    plain = _plain(compiled, rows) if compiled.kind in ("count", "crosstab") else None
    if plain is None:
        return QueryOutcome(_frame(compiled, rows), selected, population)
    return QueryOutcome(functools.partial(_frame, compiled, rows), selected, population, plain=plain)


def _plain(compiled: CompiledQuery, rows: Sequence[Any]) -> dict[str, list[Any]] | None:
    """The rows column by column, sorted as `_frame` sorts them; None when any value or dtype is not one
    whose typed frame value is itself (dates become Timestamps, a NaN group is missing...)."""
    names = [name for name, _ in compiled.output]
    if compiled.bins or len(set(names)) != len(names) or not set(compiled.group_by) <= set(names):
        return None
    kinds: list[type] = []
    for _, dtype in compiled.output:
        kind = _PLAIN_DTYPES.get(dtype)
        if kind is None:
            return None
        kinds.append(kind)
    nullable = [dtype != "int64" for _, dtype in compiled.output]
    tuples = [tuple(r) for r in rows]
    for row in tuples:
        if len(row) != len(kinds) or not all(map(_is_plain, row, kinds, nullable)):
            return None
    order = [names.index(name) for name in compiled.group_by]
    if order and len(tuples) > 1:
        # sort_values(na_position="last", kind="stable"): missing after every value, ties keep their order.
        tuples.sort(key=lambda row: tuple((row[i] is None, 0 if row[i] is None else row[i]) for i in order))
    return {name: [row[i] for row in tuples] for i, name in enumerate(names)}


def _is_plain(value: Any, kind: type, nullable: bool) -> bool:
    """Whether the typed frame holds `value` itself (None for a missing one)."""
    if value is None:
        return nullable
    if type(value) is not kind:  # exactly: a bool is an int, but not an Int64 value
        return False
    if kind is float:
        return bool(value == value)  # a NaN group is missing in the frame, yet apart from None in the store
    if kind is int:
        return isinstance(value, int) and -_EXACT_INT <= value <= _EXACT_INT
    return True


def _frame(compiled: CompiledQuery, rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    names = [name for name, _ in compiled.output]
    frame = pd.DataFrame([tuple(r) for r in rows], columns=names)
    for name, dtype in compiled.output:
        if dtype.startswith("datetime"):
            # Straight from the store's values to the column's own unit: pd.to_datetime would pass through
            # nanoseconds, which end in 2262 (and start in 1677), so a group of 9999-12-31 would fail.
            # pandas itself reads a naive value of a UTC column as UTC, and converts an aware one.
            values = frame[name].to_numpy(dtype=object)
            frame[name] = pd.Series(values, dtype=pandas_dtype(dtype), index=frame.index)
        else:
            frame[name] = frame[name].astype(pandas_dtype(dtype))
    if compiled.bins:
        lower = {i: lo for i, (lo, _) in enumerate(compiled.bins)}
        upper = {i: hi for i, (_, hi) in enumerate(compiled.bins)}
        at = names.index("bin") + 1
        frame.insert(at, "lower", frame["bin"].map(lower).astype("float64"))
        frame.insert(at + 1, "upper", frame["bin"].map(upper).astype("float64"))
    order = [*compiled.group_by, *(["bin"] if compiled.bins else [])]
    if order and len(frame):
        frame = frame.sort_values(order, na_position="last", kind="stable", ignore_index=True)
    return frame
