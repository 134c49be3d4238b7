"""Compiled selects kept per shape (duckdb_dialect.TEMPLATES): a query of a shape already compiled runs that
text with its own filter values, and gets the rows SQLAlchemy's own execution of its select returns.

The shape must hold everything the text depends on. The corpus below varies each input of compile_query
(kinds, ops, value types, list lengths, nesting, groups, kind parameters, withdrawals, consent classes) and
checks that queries of one shape compile, each on its own, to one text with the same values outside their
filters."""

from __future__ import annotations

import concurrent.futures
import importlib
import threading
from collections import defaultdict
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter
from query_helpers import CONSENT, compile_spec
from test_duckdb_run import same_rows

from gateway.query import QuerySpecError, duckdb_dialect
from gateway.query.compile import CompiledQuery
from gateway.query.consent import ConsentClasses
from gateway.query.spec import Filter

compile_module = importlib.import_module("gateway.query.compile")
parse_filter = TypeAdapter(Filter).validate_python

TOKENS = ["6f1c0a52-3d55-4a0e-9d7b-0e5f8f3b2a11", "0b7e8c2e-8a3f-4c55-b1f4-61d3b3e0c9a2"]
CONSENT_CLASSES = ConsentClasses((("DUO:0000006 DUO:0000046", 40), ("DUO:0000042", 700), (None, 3)))
# The same values, one class below min_cell_count (10): another list of admitted values.
SMALL_CLASS = ConsentClasses((("DUO:0000006 DUO:0000046", 9), ("DUO:0000042", 700), (None, 3)))

# (kind, filter tree of values v[0], v[1]..., extra spec fields); each is compiled with every value set.
ShapeMaker = Any
SHAPES: list[tuple[str, ShapeMaker, dict[str, Any]]] = [
    *(("count", lambda v, op=op: {"column": "bmi", "op": op, "value": v[0]}, {})
      for op in ("=", "!=", "<", "<=", ">", ">=")),
    ("count", lambda v: {"column": "sex", "op": "=", "value": "F" if v[0] > 25 else "M"}, {}),
    ("count", lambda v: {"column": "admission_date", "op": ">", "value": f"20{10 + int(v[0]) % 9}-01-01"},
     {}),
    ("count", lambda v: {"column": "icd10", "op": "in", "value": ["I10", "E11.9"][: 1 + int(v[0]) % 2]}, {}),
    ("count", lambda v: {"column": "icd10", "op": "in", "value": ["I10", "E11.9", "C18.9"]}, {}),
    ("count", lambda v: {"column": "survival_days", "op": "between", "value": [v[0], v[0] + 500]}, {}),
    ("count", lambda v: {"column": "bmi", "op": "is_null"}, {}),
    ("count", lambda v: {"column": "bmi", "op": "is_null", "value": False}, {}),
    ("count", lambda v: {"not": {"column": "bmi", "op": ">", "value": v[0]}}, {}),
    ("count", lambda v: {"and": [{"column": "bmi", "op": ">", "value": v[0]},
                                 {"column": "sex", "op": "=", "value": "F"}]}, {}),
    ("count", lambda v: {"or": [{"column": "bmi", "op": ">", "value": v[0]},
                                {"not": {"column": "icd10", "op": "in", "value": ["I10"]}}]}, {}),
    ("count", lambda v: {"and": [{"or": [{"column": "bmi", "op": "<", "value": v[0]},
                                         {"column": "bmi", "op": "is_null"}]},
                                 {"column": "survival_days", "op": ">=", "value": int(v[1])}]}, {}),
    ("crosstab", lambda v: {"column": "bmi", "op": ">", "value": v[0]}, {"group_by": ["sex"]}),
    ("crosstab", lambda v: {"column": "bmi", "op": ">", "value": v[0]}, {"group_by": ["sex", "smoking"]}),
    ("crosstab", lambda v: {"column": "bmi", "op": ">", "value": v[0]}, {"group_by": ["smoking", "sex"]}),
    ("summary", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"group_by": ["outcome"], "params": {"column": "systolic_bp"}}),
    ("summary", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"group_by": ["outcome"], "params": {"column": "bmi"}}),
    ("histogram", lambda v: {"column": "sex", "op": "!=", "value": "M"},
     {"group_by": ["sex"], "params": {"column": "bmi", "edges": [20, 25, 30, 35]}}),
    ("histogram", lambda v: {"column": "sex", "op": "!=", "value": "M"},
     {"group_by": ["sex"], "params": {"column": "bmi", "edges": [20, 25, 30, 40]}}),
    ("histogram", lambda v: {"column": "sex", "op": "!=", "value": "M"},
     {"group_by": ["sex"], "params": {"column": "bmi", "edges": [20, 25, 30]}}),
    # Equal in Python, not the same bound value.
    ("histogram", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"params": {"column": "systolic_bp", "edges": [-0.0, 5.0]}}),
    ("histogram", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"params": {"column": "systolic_bp", "edges": [0.0, 5.0]}}),
    ("quantiles", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"params": {"column": "systolic_bp", "probs": [0.25, 0.5, 0.9]}}),
    ("quantiles", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"params": {"column": "systolic_bp", "probs": [0.25, 0.5, 0.75]}}),
    ("kaplan_meier", lambda v: {"column": "bmi", "op": ">", "value": v[0]},
     {"params": {"time": "survival_days", "event": "event", "edges": [100, 500, 1000]}}),
]  # fmt: skip
# Floats, and ints where a float goes: a value's type is part of the shape, its value never.
VALUE_SETS = [(27.5, 3.0), (31.25, 7.0), (18.0, 1.0), (22, 4.0)]
# What the decision and the site add: the consent rule, withdrawals recorded after ingest, and the consent
# column's distinct values with their counts.
OTHER_RULE = CONSENT.model_copy(update={"require_any_of": (("DUO:0000042",),)})
CONTEXTS: list[dict[str, Any]] = [
    {},
    {"rule": OTHER_RULE},
    {"rule": OTHER_RULE, "consent_classes": CONSENT_CLASSES},
    {"patient_column": "patient_id", "withdrawn": TOKENS[:1]},
    {"patient_column": "patient_id", "withdrawn": TOKENS},
    {"consent_classes": CONSENT_CLASSES},
    {"consent_classes": ConsentClasses(CONSENT_CLASSES.counts[:2])},
    {"consent_classes": SMALL_CLASS},
]


def compiled(
    columns: list[tuple[str, str]], kind: str, node: Any, extra: dict[str, Any], **context: Any
) -> CompiledQuery:
    return compile_spec(columns, kind, node, extra, **context)


def parts(query: CompiledQuery) -> dict[str, sa.Select[Any]]:
    return {"main": query.main, "sizes": query.sizes, "selected": query.selected}


def test_queries_of_one_shape_compile_to_one_text_and_differ_only_in_their_filter_values(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    texts: dict[Any, set[str]] = defaultdict(set)
    fixed: dict[Any, set[tuple[Any, ...]]] = defaultdict(set)
    shapes_per_text: dict[str, set[Any]] = defaultdict(set)
    for kind, make, extra in SHAPES:
        for context in CONTEXTS:
            for values in VALUE_SETS:
                query = compiled(mixed_columns, kind, make(values), extra, **context)
                for part, statement in parts(query).items():
                    template = duckdb_dialect._Template.of(statement, engine.dialect, query.values.keys())
                    # Every filter value is a parameter of the text, bound as itself.
                    assert template.named == query.values.keys()
                    assert all(template.fixed[name] == value for name, value in query.values.items())
                    key = (query.shape, part)
                    texts[key].add(template.text)
                    others = tuple(
                        (n, repr(template.fixed[n])) for n in template.names if n not in template.named
                    )
                    fixed[key].add(others)
                    shapes_per_text[template.text].add(key)
    assert all(len(found) == 1 for found in texts.values()), "one shape compiled to two texts"
    assert all(len(found) == 1 for found in fixed.values()), "one shape bound two sets of other values"
    # The corpus does reach distinct texts: the shape is not one key for everything.
    assert len(shapes_per_text) > 3 * len(SHAPES)


@pytest.mark.parametrize(("kind", "make", "extra"), SHAPES[::3], ids=[s[0] for s in SHAPES[::3]])
def test_a_kept_text_runs_with_each_querys_own_values(
    engine: sa.Engine,
    mixed_columns: list[tuple[str, str]],
    kind: str,
    make: ShapeMaker,
    extra: dict[str, Any],
) -> None:
    context = {"patient_column": "patient_id", "withdrawn": TOKENS}
    first = compiled(mixed_columns, kind, make(VALUE_SETS[0]), extra, **context)
    second = compiled(mixed_columns, kind, make(VALUE_SETS[1]), extra, **context)
    assert first.shape == second.shape
    with engine.connect() as conn:
        for part, statement in parts(first).items():
            duckdb_dialect.run(conn, statement, shape=(first.shape, part), values=first.values)
        kept = len(duckdb_dialect.TEMPLATES)
        for part, statement in parts(second).items():
            expected = [tuple(row) for row in conn.execute(statement).all()]
            got = duckdb_dialect.run(conn, statement, shape=(second.shape, part), values=second.values)
            assert same_rows(got, expected)
        assert len(duckdb_dialect.TEMPLATES) == kept  # nothing compiled anew for the second query


def test_a_kept_text_is_run_without_compiling(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    low = compiled(mixed_columns, "count", {"column": "bmi", "op": ">", "value": 20.0}, {})
    high = compiled(mixed_columns, "count", {"column": "bmi", "op": ">", "value": 33.0}, {})
    with engine.connect() as conn:
        ((n_low,),) = duckdb_dialect.run(conn, low.main, shape=(low.shape, "main"), values=low.values)

        def no_compile(*args: Any) -> Any:
            raise AssertionError("compiled although a text of this shape is kept")

        monkeypatch.setattr(duckdb_dialect._Template, "of", no_compile)
        ((n_high,),) = duckdb_dialect.run(conn, high.main, shape=(high.shape, "main"), values=high.values)
        assert [(n_high,)] == [tuple(r) for r in conn.execute(high.main).all()]
    assert n_low > n_high > 0


def test_values_that_are_not_the_kept_texts_parameters_compile_anew(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    one = compiled(mixed_columns, "count", {"column": "bmi", "op": ">", "value": 20.0}, {})
    with engine.connect() as conn:
        duckdb_dialect.run(conn, one.main, shape=(one.shape, "main"), values=one.values)
        assert len(duckdb_dialect.TEMPLATES) == 1
        # The same shape key handed with a parameter the kept text does not bind: never run on that text.
        both = [{"column": "bmi", "op": ">", "value": 20.0}, {"column": "sex", "op": "=", "value": "F"}]
        two = compiled(mixed_columns, "count", {"and": both}, {})
        rows = duckdb_dialect.run(conn, two.main, shape=(one.shape, "main"), values=two.values)
        assert rows == [tuple(r) for r in conn.execute(two.main).all()]
        assert duckdb_dialect.TEMPLATES.get((one.shape, "main")) is not None


def test_kept_texts_are_bounded(engine: sa.Engine, mixed_columns: list[tuple[str, str]]) -> None:
    duckdb_dialect.TEMPLATES.max_entries = 2
    try:
        with engine.connect() as conn:
            for op in ("<", ">", "="):
                query = compiled(mixed_columns, "count", {"column": "bmi", "op": op, "value": 25.0}, {})
                duckdb_dialect.run(conn, query.main, shape=(query.shape, "main"), values=query.values)
        assert len(duckdb_dialect.TEMPLATES) == 2
    finally:
        duckdb_dialect.TEMPLATES.max_entries = 512


def test_a_column_named_like_the_filters_parameters_does_not_clash_with_them(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    # A Kaplan-Meier event column compared with a number: SQLAlchemy would name a bare value's parameter
    # after the column (filter_value_1), the name the filters' second value is bound as.
    columns = [*mixed_columns, ("filter_value", "int64")]
    node = {"and": [{"column": "bmi", "op": ">", "value": 20.0}, {"column": "sex", "op": "=", "value": "F"}]}
    extra = {"params": {"time": "survival_days", "event": "filter_value", "edges": [100, 500]}}
    query = compiled(columns, "kaplan_meier", node, extra)
    for statement in parts(query).values():
        template = duckdb_dialect._Template.of(statement, engine.dialect, query.values.keys())
        assert template.named == query.values.keys() == {"filter_value_0", "filter_value_1"}
        assert [
            template.params({})[template.names.index(n)] for n in ("filter_value_0", "filter_value_1")
        ] == [
            20.0,
            "F",
        ]


# -- selects built only when a run needs them ------------------------------------------------------------


def test_a_query_of_a_built_shape_runs_on_a_kept_text_without_building_its_selects(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = importlib.import_module("gateway.query.execute").execute
    by_sex = {"group_by": ["sex"]}
    low = compiled(mixed_columns, "crosstab", {"column": "bmi", "op": ">", "value": 20.0}, by_sex)
    low_selected = execute(engine, low).selected  # builds the shape's selects, keeps their texts
    built: list[str] = []
    selects = compile_module._selects
    monkeypatch.setattr(compile_module, "_selects", lambda *a: built.append("built") or selects(*a))
    high = compiled(mixed_columns, "crosstab", {"column": "bmi", "op": ">", "value": 33.0}, by_sex)
    answer = execute(engine, high)
    assert built == []  # neither compile_query nor the run built a select
    with engine.connect() as conn:
        expected = {tuple(r) for r in conn.execute(high.main).all()}  # built now, from high's own spec
    assert built == ["built"]
    assert answer.plain is not None
    assert set(zip(answer.plain["sex"], answer.plain["n"], strict=True)) == expected
    assert answer.selected == sum(n for _, n in expected) < low_selected


@pytest.mark.parametrize(
    ("node", "bad", "field"),
    [
        ({"column": "survival_days", "op": "between", "value": [10, 20]}, [30, 20], "filters.value"),
        ({"column": "admission_date", "op": ">", "value": "2015-01-01"}, "2015-13-45", "filters.value"),
        (
            {"column": "admission_date", "op": "in", "value": ["2015-01-01", "2016-01-01"]},
            ["2015-01-01", "2016-02-30"],
            "filters.value[1]",
        ),
    ],
)
def test_every_query_of_a_built_shape_has_its_own_values_checked(
    mixed_columns: list[tuple[str, str]], node: dict[str, Any], bad: Any, field: str
) -> None:
    good = compiled(mixed_columns, "count", node, {})
    assert compile_module._CHECKED.get(good.shape) is not None  # the shape is built and remembered
    bad_node = {**node, "value": bad}
    assert compile_module._filter_shape(parse_filter(bad_node)) == good.shape[3]  # the same shape
    with pytest.raises(QuerySpecError) as raised:
        compiled(mixed_columns, "count", bad_node, {})
    assert raised.value.field == field


def test_a_select_built_later_binds_its_own_querys_values(mixed_columns: list[tuple[str, str]]) -> None:
    node = {"column": "survival_days", "op": "between", "value": [100, 200]}
    for dialect in ("duckdb", "postgresql"):
        first = compile_spec(mixed_columns, "count", node, {}, dialect)
        second = compile_spec(mixed_columns, "count", {**node, "value": [300, 400]}, {}, dialect)
        assert first.shape == second.shape
        for query, low, high in ((second, 300, 400), (first, 100, 200)):
            params = query.main.compile().params
            assert {params["filter_value_0"], params["filter_value_1"]} == {low, high}
            assert dict(query.values) == {"filter_value_0": low, "filter_value_1": high}


def test_filter_values_read_two_ways_refuse_the_query(
    mixed_columns: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_module._CHECKED.clear()
    read = compile_module._filter_values

    def misread(node: Any, path: str, resolve: Any) -> None:
        read(node, path, resolve)
        resolve.values["filter_value_0"] = 99.0

    monkeypatch.setattr(compile_module, "_filter_values", misread)
    with pytest.raises(RuntimeError, match="read two ways"):
        compiled(mixed_columns, "count", {"column": "bmi", "op": ">", "value": 20.0}, {})
    assert len(compile_module._CHECKED) == 0


def test_queries_on_two_threads_build_their_selects_at_the_same_time() -> None:
    """No lock is shared between queries (functools.cached_property on Python 3.11 holds one per property
    for every instance): each build here waits until the other has started."""
    both_building = threading.Barrier(2, timeout=5)
    select = sa.select(sa.literal(1))

    def build() -> tuple[Any, None]:
        both_building.wait()
        return select, None

    queries = [
        CompiledQuery("count", build, select, (), (("n", "int64"),), sa.table("t"), sa.true()) for _ in "ab"
    ]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda query: query.main, queries))
    assert built == [select, select]
    assert [query.main for query in queries] == [select, select]  # kept: no further build, no barrier
