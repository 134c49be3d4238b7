"""k-anonymity after ingest: an estimate of distinct patients that misses low never changes the report.

DuckDB's estimate of distinct tokens can fall more than a tenth below the truth on large tables (8.85M
for 10M distinct tokens); these tests make it miss on small ones and check which count runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import duckdb
import pytest

from pseudonymize.risk import k_anonymity

QUASI = ["sex", "area"]


class _Answer:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class _EstimateOff:
    """A DuckDB connection whose estimate of distinct tokens is `share` of the true count; records SQL."""

    def __init__(self, con: duckdb.DuckDBPyConnection, share: float) -> None:
        self._con = con
        self._share = share
        self.statements: list[str] = []

    def execute(self, sql: str, parameters: object = None) -> Any:
        self.statements.append(sql)
        if "approx_count_distinct" in sql:
            present, estimate = self._con.execute(sql).fetchall()[0]
            return _Answer([(present, int(estimate * self._share))])
        return self._con.execute(sql, parameters)


def _table(patients: Sequence[int | None]) -> duckdb.DuckDBPyConnection:
    """One row per entry: the patient's token (or NULL), in six classes by sex and area as rows cycle."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (pid UUID, sex VARCHAR, area VARCHAR)")
    rows = [
        (None if p is None else uuid.uuid5(uuid.NAMESPACE_OID, str(p)), "FM"[i % 2], "ABC"[i % 3])
        for i, p in enumerate(patients)
    ]
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    return con


def _by_distinct_patients(con: duckdb.DuckDBPyConnection, k: int) -> tuple[int, int, int]:
    row = con.execute(
        "SELECT count(*), min(c), coalesce(sum(c) FILTER (WHERE c < ?), 0) "
        "FROM (SELECT count(DISTINCT pid) AS c FROM t GROUP BY sex, area)",
        [k],
    ).fetchall()[0]
    return int(row[0]), int(row[1]), int(row[2])


def _report(patients: Sequence[int | None], share: float, k: int = 11) -> tuple[list[str], bool]:
    con = _table(patients)
    off = _EstimateOff(con, share)
    report = k_anonymity(cast(duckdb.DuckDBPyConnection, off), "t", QUASI, k, patient_column="pid")
    assert (report.classes, report.smallest_class, report.records_below_k) == _by_distinct_patients(con, k)
    assert report.records == len(patients)
    distinct = any("count(DISTINCT" in s for s in off.statements)
    return off.statements, distinct


@pytest.mark.parametrize("share", [1.0, 0.85, 0.6])
def test_unique_tokens_are_counted_as_rows_when_the_estimate_misses_low(share: float) -> None:
    statements, distinct = _report(list(range(60)), share)
    assert not distinct
    assert any("hash(" in s for s in statements)


@pytest.mark.parametrize("share", [1.0, 0.85, 0.3])
def test_repeated_tokens_are_counted_distinct_whatever_the_estimate(share: float) -> None:
    _, distinct = _report([i if i != 54 else 0 for i in range(60)], share, k=10)
    assert distinct


def test_an_estimate_below_half_the_rows_skips_the_sort() -> None:
    statements, distinct = _report([i // 6 for i in range(60)], 1.0)
    assert distinct
    assert not any("hash(" in s for s in statements)


def test_a_row_without_a_token_is_counted_distinct() -> None:
    _, distinct = _report([*range(59), None], 1.0)
    assert distinct
