"""Counts and crosstabs run on DuckDB and PostgreSQL release the same bytes with or without pandas."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from query_helpers import TABLE, obligations

from gateway.query import QueryOutcome, compile_query, execute, parse_query_spec, store_engine
from gateway.release import protect
from pseudonymize.disclosure import DisclosureError

GROUPINGS = [
    ("count", []),
    ("count", ["sex"]),
    ("count", ["event"]),
    ("count", ["systolic_bp"]),
    ("count", ["bmi"]),
    ("count", ["admission_date"]),
    ("crosstab", ["sex", "smoking"]),
    ("crosstab", ["event", "age_band"]),
    ("crosstab", ["sex", "smoking", "event"]),
]
FILTERS: list[dict[str, Any] | None] = [None, {"column": "icd10", "op": "in", "value": ["E11.9", "I10"]}]


def released(spec: Any, outcome: QueryOutcome, rules: Any) -> bytes | str:
    try:
        return rfc8785.dumps(protect(spec, outcome, rules).body)
    except DisclosureError as exc:
        return type(exc).__name__


def check_store(url: str, columns: list[tuple[str, str]]) -> None:
    types = dict(columns)
    engine = store_engine(url)
    allowed = tuple(name for name, _ in columns)
    strict = obligations(allowed)
    rounded = strict.model_copy(update={"round_to": 5, "keep_zero_cells": True, "min_cell_count": 20})
    try:
        for (kind, groups), node in [(g, f) for g in GROUPINGS for f in FILTERS]:
            spec = parse_query_spec(
                {
                    "dataset": "mixed",
                    "agreement": "DSA-2026-014",
                    "purpose": {"duo": ["DUO:0000042"]},
                    "kind": kind,
                    "group_by": groups,
                    "filters": node,
                }
            )
            compiled = compile_query(spec, TABLE, columns, strict, engine.dialect.name)
            outcome = execute(engine, compiled)
            plain = all(types[g].startswith(("string", "bool", "int", "double")) for g in groups)
            assert (outcome.plain is not None) == plain, (kind, groups)
            pandas = QueryOutcome(outcome.frame, outcome.selected, outcome.population)
            for rules in (strict, rounded):
                assert released(spec, outcome, rules) == released(spec, pandas, rules), (kind, groups, node)
    finally:
        engine.dispose()


def test_duckdb_counts_release_the_same_bytes_without_pandas(
    duck_url: str, mixed_columns: list[tuple[str, str]]
) -> None:
    check_store(duck_url, mixed_columns)


@pytest.mark.postgres
def test_postgres_counts_release_the_same_bytes_without_pandas(
    pg_mixed_url: str, mixed_columns: list[tuple[str, str]]
) -> None:
    check_store(pg_mixed_url, mixed_columns)
