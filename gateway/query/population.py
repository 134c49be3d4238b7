"""Caches of facts about published dataset versions, which never change: query-set populations (the
consented row count under one consent rule) and the distinct values of a consent column with their counts.

The population depends only on the version table, the consent filter, the withdrawn pseudonyms and the
min_cell_count below which a consent class is left out, and published version tables never change, so the
count can be reused by every query under the same rule: it saves a full scan per query. The key is the
statement with its bound values, and each of those is bound in it (the admitted consent values, or the
min_cell_count of the subquery that finds the large classes), so a new version, another consent rule, a
min_cell_count that admits other classes or one more withdrawal is a new key. Do not use it on a store
whose tables are edited in place.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from gateway.lru import LruMap
from gateway.query.consent import ConsentClasses


class PopulationCache:
    """A bounded, thread-safe map from a population statement to its count."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._counts = LruMap[tuple[Any, ...], int](max_entries)

    @staticmethod
    def key(engine: sa.Engine, statement: sa.Select[Any]) -> tuple[Any, ...]:
        """The store and the statement with its bound values (lists made hashable).

        SQLAlchemy's structural cache key names the statement without compiling it to text (a compile per
        query cost more than the rest of the lookup); bound values follow in traversal order."""
        url = engine.url.render_as_string(hide_password=True)
        cache_key = statement._generate_cache_key()
        if cache_key is None:  # a construct SQLAlchemy cannot key: fall back to the compiled text
            compiled = statement.compile(dialect=engine.dialect)
            params = tuple((name, _hashable(value)) for name, value in sorted(compiled.params.items()))
            return url, str(compiled), params
        return url, cache_key.key, tuple(_hashable(b.effective_value) for b in cache_key.bindparams)

    def get(self, key: tuple[Any, ...]) -> int | None:
        """The cached count, or None."""
        return self._counts.get(key)

    def put(self, key: tuple[Any, ...], count: int) -> None:
        """Remember a count, forgetting the least recently used beyond `max_entries`."""
        self._counts.put(key, count)

    def __len__(self) -> int:
        return len(self._counts)


class ConsentValueCache:
    """A bounded, thread-safe map from (store engine, version table, consent column, withdrawn column) to
    the consent column's distinct values, each with the number of its rows not marked withdrawn.

    A consent column holds few distinct values (one per combination of codes patients chose). Knowing them
    all, the query compiler decides the consent rule once per value instead of splitting and matching codes
    on every row, and leaves out the values held by fewer than min_cell_count rows (`consent_predicate`'s
    `classes`). A column with more than `max_values` distinct values, or one that cannot be read, gets
    None: the compiler then uses the per-row predicate, which finds the small classes itself. A failed read
    is not remembered (the query itself meets the store's problem)."""

    def __init__(self, max_values: int = 1000, max_entries: int = 256) -> None:
        self.max_values = max_values
        self._read = functools.lru_cache(maxsize=max_entries)(self._classes)

    def get(self, engine: sa.Engine, table: str, column: str, withdrawn: str) -> ConsentClasses | None:
        """The distinct values of `column` in the version table `table` and, for each, how many of its rows
        have `withdrawn` false; read once per table."""
        try:
            return self._read(engine, table, column, withdrawn)
        except sa.exc.SQLAlchemyError:
            return None

    def _classes(self, engine: sa.Engine, table: str, column: str, withdrawn: str) -> ConsentClasses | None:
        with engine.connect() as conn:
            return read_consent_classes(conn, table, column, withdrawn, self.max_values)

    def __len__(self) -> int:
        return self._read.cache_info().currsize


def read_consent_classes(
    conn: sa.Connection, table: str, column: str, withdrawn: str, max_values: int
) -> ConsentClasses | None:
    """The distinct values of `column` in `table`, each with the number of its rows whose `withdrawn` is
    false (NULL is withdrawn), in one scan; None when there are more than `max_values` of them."""
    value = sa.column(column, sa.Text)
    rows = sa.func.count().filter(sa.column(withdrawn, sa.Boolean).is_(sa.false()))
    stmt = sa.select(value, rows).select_from(sa.table(table)).group_by(value).limit(max_values + 1)
    found = conn.execute(stmt).all()
    if len(found) > max_values:
        return None
    # In one order whatever the store's: the same classes are the same key of the compiler's caches.
    counts = sorted(((v, int(n)) for v, n in found), key=lambda c: (c[0] is None, c[0] or ""))
    return ConsentClasses(tuple(counts))


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value
