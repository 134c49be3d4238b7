"""k-anonymity after ingest: an estimate of distinct patients that misses low never changes the report.

DuckDB's estimate of distinct tokens can fall more than a tenth below the truth on large tables (8.85M
for 10M distinct tokens); these tests make it miss on small ones and check which count runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import duckdb
import pytest
from test_pseudonymize_risk import _by_distinct_patients, _table

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


def _report(patients: Sequence[int | None], share: float, k: int = 11) -> tuple[list[str], bool]:
    con = _table([None if p is None else str(p) for p in patients])
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
