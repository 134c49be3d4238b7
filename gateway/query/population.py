"""Caches of facts about published dataset versions, which never change: query-set populations (the
consented row count under one consent rule) and the distinct values of a consent column.

The population depends only on the version table, the consent filter and the withdrawn pseudonyms, and
published version tables never change, so the count can be reused by every query under the same rule:
it saves a full scan per query. The key is the compiled statement with its bound values, so a new
version, another consent rule or one more withdrawal is a new key. Do not use it on a store whose tables
are edited in place.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from gateway.lru import LruMap


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
    """A bounded, thread-safe map from (store engine, version table, consent column) to the column's
    distinct values.

    A consent column holds few distinct values (one per combination of codes patients chose). Knowing them
    all, the query compiler decides the consent rule once per value instead of splitting and matching codes
    on every row (`consent_predicate`'s `values`). A column with more than `max_values` distinct values,
    or one that cannot be read, gets None: the compiler then uses the per-row predicate. A failed read is
    not remembered (the query itself meets the store's problem)."""

    def __init__(self, max_values: int = 1000, max_entries: int = 256) -> None:
        self.max_values = max_values
        self._read = functools.lru_cache(maxsize=max_entries)(self._distinct)

    def get(self, engine: sa.Engine, table: str, column: str) -> tuple[str | None, ...] | None:
        """The distinct values of `column` in the version table `table`, read once per table."""
        try:
            return self._read(engine, table, column)
        except sa.exc.SQLAlchemyError:
            return None

    def _distinct(self, engine: sa.Engine, table: str, column: str) -> tuple[str | None, ...] | None:
        stmt = sa.select(sa.column(column, sa.Text)).select_from(sa.table(table)).distinct()
        with engine.connect() as conn:
            rows = conn.execute(stmt.limit(self.max_values + 1)).all()
        if len(rows) > self.max_values:
            return None
        return tuple(r[0] for r in rows)

    def __len__(self) -> int:
        return self._read.cache_info().currsize


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value
