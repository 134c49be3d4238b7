"""The DuckDB dialect queries run on: duckdb_engine's, read-only, with the compiled-statement cache on;
and `run`, which hands a compiled select to DuckDB's own connection with its parse kept."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping
from typing import Any, Final

import duckdb
import duckdb_engine
import sqlalchemy as sa

from gateway.lru import LruMap

DRIVER_NAME = "duckdb+query"

PARSED_PER_CONNECTION: Final = 256
"""SQL texts whose DuckDB parse each pooled connection keeps (least recently used forgotten first)."""
_PARSED: Final = "fedgate.duckdb_parsed"


class QueryDuckDBDialect(duckdb_engine.Dialect):
    """duckdb_engine's dialect for read-only queries, with SQLAlchemy's compiled-statement cache on.

    duckdb_engine leaves the cache off (it has not certified every construct it supports); the queries
    compiled here use only core constructs whose cache keys SQLAlchemy defines (selects over a table
    clause, functions, casts and bound parameters), and compiling each statement anew cost a sixth of a
    small query. Registered as the `duckdb+query` driver; its dialect name stays `duckdb`."""

    supports_statement_cache = True

    # Queries only read, and a published version table never changes: each statement runs in DuckDB's
    # own transaction (autocommit), saving an explicit BEGIN and ROLLBACK per query (a third of the
    # store's time on a small table). Nothing is ever written through this dialect's connections.
    def do_begin(self, dbapi_connection: Any) -> None:
        return None

    def do_rollback(self, dbapi_connection: Any) -> None:
        return None

    def do_commit(self, dbapi_connection: Any) -> None:
        return None


sa.dialects.registry.register("duckdb.query", __name__, QueryDuckDBDialect.__name__)


def run(
    conn: sa.Connection,
    statement: sa.Select[Any] | Callable[[], sa.Select[Any]],
    *,
    shape: Hashable | None = None,
    values: Mapping[str, Any] | None = None,
    at_most: int | None = None,
) -> list[tuple[Any, ...]]:
    """The rows of `statement`, run on the DuckDB connection under `conn` (a `duckdb+query` connection).

    SQLAlchemy compiles the statement to text and bound values (expanded IN lists and bind processors
    applied, as its own execution would); DuckDB parses each distinct text once per connection and runs
    the kept parse with the values. Going through SQLAlchemy's execution instead cost a structural
    cache key per new statement and a result-metadata layer, and DuckDB's parse of the same text on
    every run: together more than the DuckDB run itself on a small table. Rows are the driver's tuples,
    without SQLAlchemy's result processing, which the dialect's core types never needed: the caller
    types every column itself (gateway.query.execute).

    With a `shape` (see gateway.query.compile.CompiledQuery.shape), the compiled text is kept per shape
    and run with this statement's `values` (its named parameters; every other bound value is fixed by
    the shape): compiling cost about a fifth of a small query. A statement whose named parameters are
    not exactly those the kept compile binds is compiled anew. On a kept shape `statement` itself is not
    read: `shape` and `values` must be the ones compile_query made with it (as execute passes them).
    `statement` may be given as the function that builds it, called only when the text is compiled.

    With `at_most`, no more rows than that are fetched, and the rest are dropped: DuckDB holds a result,
    and what it took to compute (an aggregate's groups), until the connection runs its next statement,
    which for a pooled connection may be long after."""
    given = values or {}
    template = TEMPLATES.get(shape) if shape is not None else None
    if template is not None and template.named == given.keys():
        params = template.params(given)
    else:
        select = statement() if callable(statement) else statement
        template = _Template.of(select, conn.dialect, given.keys())
        params = template.params({})  # the statement's own values, as compiled
        if shape is not None and template.reusable and template.named == given.keys():
            TEMPLATES.put(shape, template)
    pooled = conn.connection
    parsed: OrderedDict[str, duckdb.Statement] = pooled.info.setdefault(_PARSED, OrderedDict())
    text = template.text
    kept = parsed.get(text)
    # duckdb_engine's wrapper: DuckDB's own connection behind attribute pass-through.
    driver: Any = pooled.driver_connection
    if driver is None:
        raise sa.exc.InvalidRequestError("the store connection is closed")
    if kept is None:
        statements = driver.extract_statements(text)
        if len(statements) != 1:
            raise sa.exc.CompileError(f"a select compiled to {len(statements)} statements")
        kept = parsed[text] = statements[0]
        while len(parsed) > PARSED_PER_CONNECTION:
            parsed.popitem(last=False)
    else:
        parsed.move_to_end(text)
    result = driver.execute(kept, params)
    if at_most is None:
        rows: list[tuple[Any, ...]] = result.fetchall()
        return rows
    rows = result.fetchmany(at_most)
    if len(rows) == at_most:
        driver.execute(_DROP_RESULT).fetchall()
    return rows


_DROP_RESULT: Final = "SELECT NULL WHERE FALSE"
"""Any statement: running it ends the connection's result before it."""


class _Template:
    """A select compiled for DuckDB: its text, its positional parameters' names, and each one's value and
    bind processor as compiled."""

    __slots__ = ("fixed", "named", "names", "processors", "reusable", "text")

    def __init__(self, compiled: sa.sql.compiler.SQLCompiler, named: Collection[str]) -> None:
        state = compiled.construct_expanded_state()
        self.text: str = state.statement
        self.names: tuple[str, ...] = tuple(state.positiontup or ())
        self.fixed: dict[str, Any] = dict(state.parameters)
        self.processors: Mapping[str, Any] = state.processors
        self.named = frozenset(name for name in self.names if name in named)
        """The parameters a run binds from its own values (the filters', `CompiledQuery.values`)."""
        # An expanding or literal-rendered parameter's count or value is part of the text.
        self.reusable = not compiled.post_compile_params and not compiled.literal_execute_params

    @classmethod
    def of(cls, statement: sa.Select[Any], dialect: sa.Dialect, named: Collection[str] = ()) -> _Template:
        """`statement` compiled; `named` are the parameters a run of the kept text binds itself."""
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, sa.sql.compiler.SQLCompiler)
        return cls(compiled, named)

    def params(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional values, each named one taken from `values` when there, else as compiled."""
        processors = self.processors
        out = []
        for name in self.names:
            value = values[name] if name in values else self.fixed[name]
            out.append(processors[name](value) if name in processors else value)
        return out


TEMPLATES: Final = LruMap[Hashable, _Template](512)
"""Compiled selects by shape."""
