"""Counts released from the executor's Python rows equal the pandas release, value for value and type."""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import pandas as pd
import pytest
import rfc8785
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from query_helpers import obligations

from gateway.decision.models import Obligations
from gateway.query import QueryOutcome, parse_query_spec
from gateway.query.compile import CompiledQuery
from gateway.release import protect
from pseudonymize.disclosure import (
    DisclosureError,
    DisclosureRules,
    check_query_set,
    protect_count_columns,
    protect_counts,
)
from pseudonymize.disclosure.levels import recode_rare_levels
from pseudonymize.disclosure.report import _json_value

# `gateway.query.execute` is shadowed by the function of that name in the package.
execute_module = importlib.import_module("gateway.query.execute")

LEVELS: dict[str, list[Any]] = {
    "string": ["a", "b", "B", "", "(other)", "é", "10", "9"],
    "Int64": [-3, 0, 1, 2, 10, 2**53, -(2**40)],
    "boolean": [False, True],
    "float64": [0.0, -0.5, 1.5, 2.25, 1e300, math.inf, -math.inf, math.nan],
}
NAMES = ("sex", "smoking", "outcome")


def compiled_query(kind: str, groups: tuple[str, ...], dtypes: list[str]) -> CompiledQuery:
    select = sa.select(sa.literal(1))
    output = (*zip(groups, dtypes, strict=True), ("n", "int64"))
    return CompiledQuery(kind, lambda: (select, None), select, groups, output, sa.table("t"), sa.true())


def rules_obligations(min_cell_count: int, round_to: int, keep_zero_cells: bool) -> Obligations:
    base = obligations(NAMES)
    return base.model_copy(
        update={"min_cell_count": min_cell_count, "round_to": round_to, "keep_zero_cells": keep_zero_cells}
    )


@st.composite
def count_answers(draw: st.DrawFn) -> tuple[Any, CompiledQuery, list[tuple[Any, ...]], int, Obligations]:
    """A count or crosstab spec, its compiled shape, the store's rows (any order), population, rules."""
    kind = draw(st.sampled_from(["count", "crosstab"]))
    n_groups = draw(st.integers(1 if kind == "crosstab" else 0, 3))
    groups = NAMES[:n_groups]
    dtypes = [draw(st.sampled_from(sorted(LEVELS))) for _ in groups]
    levels = [
        [*draw(st.lists(st.sampled_from(LEVELS[d]), min_size=1, max_size=4, unique=True)), None]
        for d in dtypes
    ]
    cells = draw(
        st.lists(st.tuples(*(st.sampled_from(lv) for lv in levels)), max_size=12, unique=True)
        if groups
        else st.just([()])
    )
    small = st.integers(0 if not groups else 1, 12)
    rows = [(*cell, draw(st.one_of(small, st.integers(13, 400)))) for cell in cells]
    rows = draw(st.permutations(rows))
    selected = sum(r[-1] for r in rows)
    population = selected + draw(st.sampled_from([0, 3, 40]))
    rules = rules_obligations(
        draw(st.integers(1, 12)), draw(st.sampled_from([1, 2, 5, 10])), draw(st.booleans())
    )
    spec = parse_query_spec(_spec(kind, list(groups)))
    return spec, compiled_query(kind, groups, dtypes), rows, population, rules


def typed(value: Any) -> Any:
    """The value with every scalar's exact type beside it, so 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return [(key, typed(v)) for key, v in value.items()]
    if isinstance(value, list | tuple):
        return [typed(v) for v in value]
    return (type(value).__name__, value if not isinstance(value, float) or value == value else "nan")


def frame_body(spec: Any, outcome: QueryOutcome, obligations: Obligations) -> dict[str, Any]:
    """What the release was before the fast path: the protected DataFrame converted to JSON-ready rows."""
    rules = DisclosureRules.from_obligations(obligations)
    check_query_set(outcome.selected, outcome.population, rules)
    groups = list(spec.group_by)
    frame = recode_rare_levels(outcome.frame, groups, rules, merge=True)
    margins = spec.kind == "crosstab" or bool(groups)
    table = protect_counts(frame, groups, rules, margins=margins, count_col="n")
    columns = list(table.frame.columns)
    records = [
        dict(zip(columns, map(_json_value, row), strict=True))
        for row in table.frame.to_numpy(dtype=object).tolist()
    ]
    report = table.report
    disclosure = {
        **dataclasses.asdict(report),
        "reasons": list(report.reasons),
        "suppressed": report.suppressed,
        "rounded": report.rounded,
    }
    return {"columns": [str(c) for c in columns], "rows": records, "disclosure": disclosure}


def canonical(body: dict[str, Any]) -> bytes | str:
    try:
        return rfc8785.dumps(body)
    except rfc8785.CanonicalizationError as exc:  # a group value JSON cannot hold exactly
        return type(exc).__name__


def answer(make: Any) -> Any:
    try:
        return typed(make())
    except DisclosureError as exc:
        return type(exc).__name__


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count_answers())
def test_fast_release_equals_the_pandas_release(
    case: tuple[Any, CompiledQuery, list[tuple[Any, ...]], int, Obligations],
) -> None:
    spec, compiled, rows, population, rules = case
    selected = sum(r[-1] for r in rows)
    fast = execute_module._outcome(compiled, rows, selected, population)
    nan_group = any(isinstance(v, float) and v != v for r in rows for v in r)
    assert (fast.plain is None) == nan_group, "every NaN-free count keeps its Python rows"
    slow = QueryOutcome(execute_module._frame(compiled, rows), selected, population)
    assert slow.plain is None

    released = answer(lambda: protect(spec, fast, rules).body)
    assert released == answer(lambda: protect(spec, slow, rules).body)
    assert released == answer(lambda: frame_body(spec, slow, rules))
    if not isinstance(released, str):  # the bytes the answer's hash is taken over
        assert canonical(protect(spec, fast, rules).body) == canonical(frame_body(spec, slow, rules))


@settings(max_examples=300, deadline=None)
@given(count_answers())
def test_python_rows_are_the_frame_in_its_order(
    case: tuple[Any, CompiledQuery, list[tuple[Any, ...]], int, Obligations],
) -> None:
    _, compiled, rows, _, _ = case
    outcome = execute_module._outcome(compiled, rows, 0, 0)
    expected = execute_module._frame(compiled, rows)
    pd.testing.assert_frame_equal(outcome.frame, expected)
    if outcome.plain is None:
        return
    assert list(outcome.plain) == list(expected.columns)
    for name, values in outcome.plain.items():
        in_frame = [
            None if v is pd.NA or (isinstance(v, float) and v != v) else v for v in expected[name].tolist()
        ]
        assert typed(values) == typed(in_frame), name


def test_frame_is_built_once_and_only_when_asked() -> None:
    compiled = compiled_query("count", ("sex",), ["string"])
    calls: list[int] = []
    real = execute_module._frame

    def counting(*args: Any) -> pd.DataFrame:
        calls.append(1)
        return real(*args)

    rows = [("M", 40), ("F", 60)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(execute_module, "_frame", counting)
        outcome = execute_module._outcome(compiled, rows, 100, 100)
        body = protect(
            parse_query_spec(_spec("count", ["sex"])), outcome, rules_obligations(10, 1, False)
        ).body
        assert calls == []
        assert outcome.frame is outcome.frame
        assert calls == [1]
    assert body["columns"] == ["sex", "count", "suppressed", "suppression_reason", "margin"]
    assert [r["sex"] for r in body["rows"]] == ["F", "M", None]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("string", 3), ("Int64", True), ("Int64", 2**53 + 1), ("Int64", 1.0), ("float64", 1), ("boolean", 1)],
)
def test_values_the_frame_would_convert_keep_the_pandas_path(dtype: str, value: Any) -> None:
    compiled = compiled_query("count", ("sex",), [dtype])
    assert execute_module._plain(compiled, [(value, 20)]) is None


def test_dates_and_other_kinds_keep_the_pandas_path() -> None:
    dated = compiled_query("count", ("sex",), ["datetime64[s]"])
    assert execute_module._plain(dated, []) is None
    summary = dataclasses.replace(compiled_query("count", ("sex",), ["string"]), kind="summary")
    assert execute_module._outcome(summary, [("F", 20)], 20, 20).plain is None


def _spec(kind: str, groups: list[str]) -> dict[str, Any]:
    return {
        "dataset": "mixed",
        "agreement": "DSA-2026-014",
        "purpose": {"duo": ["DUO:0000042"]},
        "kind": kind,
        "group_by": groups,
    }


def test_a_released_table_still_offers_its_typed_frame() -> None:
    columns = {"sex": ["F", "M", None], "n": [4, 30, 40]}
    table = protect_count_columns(columns, ["sex"], DisclosureRules(10), margins=True, count_col="n")
    frame = table.frame
    assert list(frame.columns) == table.column_names
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == {
        "sex": "object",
        "count": "Int64",
        "suppressed": "bool",
        "suppression_reason": "object",
        "margin": "object",
    }
    assert frame["count"].isna().tolist() == [True, True, False, False]  # 4 is small, 30 its complement
    assert table.frame is frame
