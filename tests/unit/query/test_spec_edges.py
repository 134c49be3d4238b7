"""Specs at the edges of what the answer's columns can hold: quantile probabilities on one point of the grid
(one column name for two quantiles), and group columns named like a column the answer adds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from query_helpers import CONSENT, TABLE, obligations

from gateway.client import _RESULT_DTYPES
from gateway.federation.km import POOLED_COLUMNS
from gateway.query import (
    RESERVED_NAMES,
    QuantilesQuery,
    QuerySpecError,
    compile_query,
    execute,
    parse_query_spec,
    quantile_name,
    store_engine,
)
from gateway.release import protect

BASE = {"dataset": "mixed", "agreement": "DSA-2026-014", "purpose": {"duo": ["DUO:0000042"]}}
PARAMS: dict[str, dict[str, Any]] = {
    "count": {},
    "crosstab": {},
    "summary": {"params": {"column": "x"}},
    "histogram": {"params": {"column": "x", "edges": [2.0, 4.0]}},
    "quantiles": {"params": {"column": "x", "probs": [0.25, 0.5]}},
}
GROUPED_KINDS = tuple(PARAMS)


def spec(kind: str, **extra: Any) -> Any:
    return parse_query_spec({**BASE, "kind": kind, **PARAMS.get(kind, {}), **extra})


def quantiles(probs: list[float]) -> dict[str, Any]:
    return {**BASE, "kind": "quantiles", "params": {"column": "x", "probs": probs}}


# -- quantile probabilities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "first", "second", "point"),
    [
        ([0.15, 0.15 + 4e-11], 0, 1, "0.15"),
        ([0.5, 0.5 - 4e-11], 0, 1, "0.5"),
        ([0.25, 0.1 + 0.2, 0.75, 0.3], 1, 3, "0.3"),
        ([0.05 + 1e-12, 0.95, 0.05], 0, 2, "0.05"),
    ],
)
def test_probabilities_on_one_point_of_the_grid_are_refused_naming_both(
    probs: list[float], first: int, second: int, point: str
) -> None:
    with pytest.raises(QuerySpecError) as caught:
        parse_query_spec(quantiles(probs))
    assert caught.value.field == "params.probs"
    expected = f"probs must be distinct: probs[{first}] and probs[{second}] are both {point}"
    assert caught.value.message == expected


@given(
    st.lists(
        st.tuples(st.integers(1, 19), st.floats(-4.9e-11, 4.9e-11)), min_size=1, max_size=5
    )  # a point of the grid, and a drift the grid's tolerance takes
)
def test_accepted_probabilities_name_distinct_columns(points: list[tuple[int, float]]) -> None:
    probs = [min(max(round(k * 0.05, 2) + drift, 0.05), 0.95) for k, drift in points]  # within the bounds
    distinct = len({k for k, _ in points}) == len(points)
    try:
        parsed = parse_query_spec(quantiles(probs))
        assert isinstance(parsed, QuantilesQuery)
    except QuerySpecError as exc:
        assert not distinct and exc.field == "params.probs"
        return
    assert distinct
    names = [quantile_name(p) for p in parsed.params.probs]
    assert names == [quantile_name(round(k * 0.05, 2)) for k, _ in points]
    assert len(set(names)) == len(names)


# -- group columns named like the answer's columns --------------------------------------------------------

CLASHING = ("count", "margin", "suppressed", "suppression_reason", "mean", "variance", "bin_width", "at_risk")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """60 consented rows: a group column `g`, a column of every reserved name, a value `x`, an event `e`."""
    path = Path(tmp_path_factory.mktemp("edges")) / "edges.duckdb"
    reserved = ", ".join(f"['a', 'b'][1 + i % 2] AS \"{name}\"" for name in RESERVED_NAMES)
    con = duckdb.connect(str(path))
    con.execute(
        f"CREATE TABLE \"{TABLE}\" AS SELECT 'DUO:0000042' AS consent_duo, false AS consent_withdrawn, "
        f"['x', 'y'][1 + i % 2] AS g, {reserved}, (i % 7)::DOUBLE AS x, i % 3 = 0 AS e FROM range(60) t(i)"
    )
    con.close()
    engine = store_engine(f"duckdb:///{path}")
    yield engine
    engine.dispose()


def columns() -> list[tuple[str, str]]:
    names = [("consent_duo", "string"), ("consent_withdrawn", "bool"), ("g", "string")]
    return [*names, *((name, "string") for name in RESERVED_NAMES), ("x", "double"), ("e", "bool")]


def allowed() -> tuple[str, ...]:
    return ("g", *RESERVED_NAMES, "x", "e")


@pytest.mark.parametrize("kind", GROUPED_KINDS)
@pytest.mark.parametrize("name", CLASHING)
def test_a_group_column_named_like_a_result_column_is_refused(kind: str, name: str) -> None:
    with pytest.raises(QuerySpecError) as caught:
        compile_query(spec(kind, group_by=["g", name]), TABLE, columns(), obligations(allowed()), "duckdb")
    assert caught.value.field == "group_by[1]"
    assert repr(name) in caught.value.message


@pytest.mark.parametrize("kind", GROUPED_KINDS)
def test_every_column_an_answer_adds_is_reserved(engine: sa.Engine, kind: str) -> None:
    """What the executor, disclosure control and the client's typed frames (a federation's pooled columns
    among them) name besides the groups is in RESERVED_NAMES, but for the quantiles, whose names cannot be
    a column's."""
    asked = spec(kind, group_by=["g"])
    rules = obligations(allowed(), CONSENT, 5)
    compiled = compile_query(asked, TABLE, columns(), rules, "duckdb")
    outcome = execute(engine, compiled)
    body = protect(asked, outcome, rules).body
    assert body["rows"] and all(row["g"] in ("x", "y", None) for row in body["rows"])
    added = {name for name, _ in compiled.output} | set(body["columns"]) | set(_RESULT_DTYPES[kind])
    added -= {"g"}
    if isinstance(asked, QuantilesQuery):
        added -= {quantile_name(p) for p in asked.params.probs}
    assert added <= set(RESERVED_NAMES)


def test_survival_columns_are_reserved() -> None:
    assert {*POOLED_COLUMNS, *_RESULT_DTYPES["kaplan_meier"], "bin", "n"} <= set(RESERVED_NAMES)
