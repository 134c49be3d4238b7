"""Histograms and Kaplan–Meier close their bins on the same side, (a, b]: a value equal to an edge falls in
the bin that edge ends, in both kinds, so the same edges split the same rows whichever kind is asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from query_helpers import TABLE, duckdb_holding, obligations, postgres_schema_holding

from gateway.query import compile_query, execute, parse_query_spec, store_engine

EDGE = 30
"""A survival time held by one patient only, censored: the row an edge must not isolate."""
# (time, event, how many rows): the one patient at EDGE between groups large enough to pass any cell rule.
ROWS = [(10, True, 15), (20, False, 12), (EDGE, False, 1), (40, True, 14), (45, False, 13), (50, True, 11)]
COLUMNS = [
    ("consent_duo", "string"),
    ("consent_withdrawn", "bool"),
    ("survival_days", "int32"),
    ("event", "bool"),
]


def cohort() -> pa.Table:
    rows = [(t, e) for t, e, n in ROWS for _ in range(n)]
    return pa.table(
        {
            "consent_duo": pa.array(["DUO:0000042"] * len(rows), pa.string()),
            "consent_withdrawn": pa.array([False] * len(rows), pa.bool_()),
            "survival_days": pa.array([t for t, _ in rows], pa.int32()),
            "event": pa.array([e for _, e in rows], pa.bool_()),
        }
    )


@pytest.fixture()
def duck_edges_url(tmp_path: Path) -> str:
    return duckdb_holding(tmp_path / "edges.duckdb", cohort())


@pytest.fixture()
def pg_edges_url(pg_server_url: str) -> Iterator[str]:
    with postgres_schema_holding(pg_server_url, cohort(), "edges") as url:
        yield url


def per_bin(url: str, kind: str, params: dict[str, Any], node: Any = None) -> dict[int, tuple[int, ...]]:
    """The executor's rows of one query, by bin: (n,) for a histogram, (n, events) for Kaplan–Meier."""
    spec = parse_query_spec(
        {"dataset": "edges", "agreement": "DSA-2026-014", "purpose": {"duo": ["DUO:0000042"]}, "kind": kind,
         "filters": node, "params": params}
    )  # fmt: skip
    engine = store_engine(url)
    try:
        allowed = tuple(name for name, _ in COLUMNS)
        compiled = compile_query(spec, TABLE, COLUMNS, obligations(allowed), engine.dialect.name)
        frame = execute(engine, compiled).frame
    finally:
        engine.dispose()
    stats = ["n", "events"] if kind == "kaplan_meier" else ["n"]
    return {int(row["bin"]): tuple(int(row[s]) for s in stats) for row in frame.to_dict("records")}


def at_or_below(edge: float, *, events_only: bool = False) -> int:
    return sum(n for t, e, n in ROWS if t <= edge and (e or not events_only))


def check_one_edge_splits_alike(url: str) -> None:
    """Attack: Kaplan–Meier with edges [e] counts the events and censorings at or below e; a histogram
    with edges [e, hi] counted the rows below e, and the same histogram of the rows with an event the events
    below e. With one patient at e, the differences gave that patient's time and that they were censored."""
    edges = [EDGE, 42]
    km = per_bin(url, "kaplan_meier", {"time": "survival_days", "event": "event", "edges": edges})
    hist = per_bin(url, "histogram", {"column": "survival_days", "edges": edges})
    happened = {"column": "event", "op": "=", "value": True}
    hist_events = per_bin(url, "histogram", {"column": "survival_days", "edges": edges}, happened)
    # The value on the edge is in the bin the edge closes, in each kind.
    assert km[0] == (at_or_below(EDGE), at_or_below(EDGE, events_only=True))
    assert hist[0] == (at_or_below(EDGE),)
    # Every bin holds the same rows in both kinds, and the same events.
    for b in range(len(edges) + 1):
        n, events = km.get(b, (0, 0))
        assert hist.get(b, (0,)) == (n,), b
        assert hist_events.get(b, (0,)) == (events,), b


def test_duckdb_histogram_and_kaplan_meier_split_rows_at_an_edge_alike(duck_edges_url: str) -> None:
    check_one_edge_splits_alike(duck_edges_url)


@pytest.mark.postgres
def test_postgres_histogram_and_kaplan_meier_split_rows_at_an_edge_alike(pg_edges_url: str) -> None:
    check_one_edge_splits_alike(pg_edges_url)
