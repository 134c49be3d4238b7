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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.lru import LruMap
from gateway.query.consent import ConsentClasses, not_withdrawn, withdrawals_digest


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
    the consent column's distinct values, each with the number of its rows not marked withdrawn; and from
    those and a set of withdrawals recorded after ingest to the same counts without the withdrawn
    patients' rows.

    A consent column holds few distinct values (one per combination of codes patients chose). Knowing them
    all, the query compiler decides the consent rule once per value instead of splitting and matching codes
    on every row, and leaves out the values held by fewer than min_cell_count rows (`consent_predicate`'s
    `classes`). A column with more than `max_values` distinct values, or one that cannot be read, gets
    None: the compiler then uses the per-row predicate, which finds the small classes itself. A failed read
    is not remembered (the query itself meets the store's problem).

    Withdrawals are rare and queries many: the classes a version table gives carry a `recount` bound to
    it, and each set of withdrawals is counted once, in one scan, when first asked
    (`ConsentClasses.without_withdrawals`), then kept under its digest (a new withdrawal is a new
    digest, so a new count; the same set asked again is not)."""

    def __init__(self, max_values: int = 1000, max_entries: int = 256) -> None:
        self.max_values = max_values
        self._read = functools.lru_cache(maxsize=max_entries)(self._classes)
        self._recounted = LruMap[tuple[Any, ...], ConsentClasses](max_entries)

    def get(
        self,
        engine: sa.Engine,
        table: str,
        column: str,
        withdrawn: str,
        *,
        patient_column: str | None = None,
        withdrawals: Sequence[str] = (),
    ) -> ConsentClasses | None:
        """The distinct values of `column` in the version table `table` and, for each, how many of its rows
        have `withdrawn` false and, given `withdrawals`, a `patient_column` not among them; the table is
        read once, and once more per set of withdrawals."""
        if withdrawals and patient_column is None:
            raise ValueError("withdrawals cannot be counted out without the patient column")
        try:
            classes = self._read(engine, table, column, withdrawn)
            if classes is not None and patient_column is not None:
                classes = classes.without_withdrawals(patient_column, withdrawals)
            return classes
        except sa.exc.SQLAlchemyError:
            return None

    def _classes(self, engine: sa.Engine, table: str, column: str, withdrawn: str) -> ConsentClasses | None:
        with engine.connect() as conn:
            classes = read_consent_classes(conn, table, column, withdrawn, self.max_values)
        if classes is None:
            return None
        return ConsentClasses(classes.counts, recount=_TableRecount(self, engine, table, column, withdrawn))

    def _recount(
        self, source: _TableRecount, patient_column: str, tokens: Sequence[str], digest: str
    ) -> ConsentClasses | None:
        key = (source, patient_column, digest)
        found = self._recounted.get(key)
        if found is not None:
            return found
        with source.engine.connect() as conn:
            counted = read_consent_classes(
                conn, source.table, source.column, source.withdrawn, self.max_values,
                patient_column=patient_column, withdrawals=tokens,
            )  # fmt: skip
        if counted is None:  # only when the table changed, which a published version never does
            return None
        found = ConsentClasses(counted.counts, withdrawals=digest, recount=source)
        self._recounted.put(key, found)
        return found

    def __len__(self) -> int:
        return self._read.cache_info().currsize


@dataclass(frozen=True)
class _TableRecount:
    """The `ConsentClasses.recount` of one version table read by one cache: equal only to itself (the
    cache and the engine compare by identity), so the classes of two tables, or of two stores with equal
    counts, never share a count taken after withdrawals, nor the compiler's predicate built on one."""

    cache: ConsentValueCache
    engine: sa.Engine
    table: str
    column: str
    withdrawn: str

    def __call__(self, patient_column: str, tokens: Sequence[str], digest: str) -> ConsentClasses | None:
        return self.cache._recount(self, patient_column, tokens, digest)


def read_consent_classes(
    conn: sa.Connection,
    table: str,
    column: str,
    withdrawn: str,
    max_values: int,
    *,
    patient_column: str | None = None,
    withdrawals: Sequence[str] = (),
) -> ConsentClasses | None:
    """The distinct values of `column` in `table`, each with the number of its rows whose `withdrawn` is
    false (NULL is withdrawn) and, given `withdrawals`, whose `patient_column` is not among them (as
    `not_withdrawn` leaves them out of every query), in one scan; None when there are more than
    `max_values` of them. A value whose every row is left out is still listed, with 0."""
    value = sa.column(column, sa.Text)
    kept: sa.ColumnElement[bool] = sa.column(withdrawn, sa.Boolean).is_(sa.false())
    if withdrawals:
        if patient_column is None:
            raise ValueError("withdrawals cannot be counted out without the patient column")
        patient = sa.column(patient_column, sa.Text)
        kept = sa.and_(kept, not_withdrawn(patient, withdrawals, conn.dialect.name))
    rows = sa.func.count().filter(kept)
    stmt = sa.select(value, rows).select_from(sa.table(table)).group_by(value).limit(max_values + 1)
    found = conn.execute(stmt).all()
    if len(found) > max_values:
        return None
    # In one order whatever the store's: the same classes are the same key of the compiler's caches.
    counts = sorted(((v, int(n)) for v, n in found), key=lambda c: (c[0] is None, c[0] or ""))
    return ConsentClasses(tuple(counts), withdrawals=withdrawals_digest(withdrawals))


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value
