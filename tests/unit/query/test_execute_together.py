"""Counts and cross-tabulations of one shape run as one statement (execute_together): each query gets
exactly the answer it gets alone, a failure stays with the query that caused it, and what cannot share a
statement runs alone.

An answer handed to the wrong query would release one researcher's figures to another, so every query of
every batch is checked against its own run."""

from __future__ import annotations

import itertools
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from query_helpers import MANY_GROUPS_COLUMNS, MANY_GROUPS_SIDE, compile_spec, rows_fetched
from test_compiled_templates import CONTEXTS, SHAPES, TOKENS

from gateway.query import (
    CompiledQuery,
    PopulationCache,
    QueryOutcome,
    ValueMismatch,
    duckdb_dialect,
    execute,
    store_engine,
)
from gateway.query.compile import counted_together
from gateway.query.execute import execute_together, together_key
from pseudonymize.disclosure import MAX_GRID_CELLS, TableTooLarge

COUNT_SHAPES = [s for s in SHAPES if s[0] in ("count", "crosstab")]
# Values that keep many rows, few, none, and everything: a group with no rows for one query of a batch
# must not appear in its answer.
VALUES = [(27.5, 3.0), (31.25, 7.0), (18.0, 1.0), (22.0, 4.0), (99.0, 9000.0), (-5.0, 0.0)]


@pytest.fixture()
def shared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch that ran as one statement and gave its answers (no fallback)."""
    sizes: list[int] = []
    execute_module = sys.modules["gateway.query.execute"]
    original = execute_module._counted_together

    def spy(engine: sa.Engine, queries: Any, population: int) -> Any:
        outcomes = original(engine, queries, population)
        sizes.append(len(queries))
        return outcomes

    monkeypatch.setattr(execute_module, "_counted_together", spy)
    return sizes


def answer(outcome: QueryOutcome | Exception) -> tuple[Any, ...]:
    """What a released answer is made of: the rows, in the frame's order, and the query-set sizes."""
    assert isinstance(outcome, QueryOutcome), outcome
    rows = [tuple(row) for row in outcome.frame.astype(object).itertuples(index=False)]
    return rows, outcome.selected, outcome.population


def alone(engine: sa.Engine, queries: list[CompiledQuery]) -> list[tuple[Any, ...]]:
    return [answer(execute(engine, query)) for query in queries]


def test_each_query_of_a_batch_gets_the_answer_it_gets_alone(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]], shared: list[int]
) -> None:
    populations = PopulationCache()
    one_statement = 0
    for (kind, make, extra), context in itertools.product(COUNT_SHAPES, CONTEXTS[::2]):
        queries = [compile_spec(mixed_columns, kind, make(v), extra, **context) for v in VALUES]
        expected = alone(engine, queries)
        # The first run alone tells the cache the population, which a shared statement needs.
        execute(engine, queries[0], populations=populations)
        for size in (2, 3, len(queries)):
            # In order, then reversed, so that a query's place in the batch cannot be what gives it its
            # answer.
            for batch, wanted in (
                (queries[:size], expected[:size]),
                (queries[:size][::-1], expected[:size][::-1]),
            ):
                before = len(shared)
                got = [answer(o) for o in execute_together(engine, batch, populations=populations)]
                assert got == wanted, (kind, extra, context)
                # A batch of one shape ran as one statement and answered from it; queries of two shapes
                # (an `in` list's length is part of the shape) ran alone.
                one_shape = len({q.shape for q in batch}) == 1
                assert len(shared) == before + one_shape, (kind, extra, context)
                one_statement += one_shape
    # Most batches did share a statement: all but those of varying list length.
    assert one_statement >= 4 * 6 * (len(COUNT_SHAPES) - 2)


def test_queries_of_two_shapes_handed_together_run_alone(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    # An int where a float goes is another shape: the batch is refused as one statement, each runs alone.
    node = lambda v: {"column": "bmi", "op": ">", "value": v}  # noqa: E731
    queries = [compile_spec(mixed_columns, "count", node(v), {}) for v in (22.0, 25, 30.0)]
    assert queries[0].shape != queries[1].shape
    populations = PopulationCache()
    execute(engine, queries[0], populations=populations)
    outcomes = execute_together(engine, queries, populations=populations)
    assert [answer(o) for o in outcomes] == alone(engine, queries)


def test_a_batch_runs_one_statement(engine: sa.Engine, mixed_columns: list[tuple[str, str]]) -> None:
    populations = PopulationCache()
    node = lambda v: {"column": "bmi", "op": ">", "value": v}  # noqa: E731
    queries = [compile_spec(mixed_columns, "crosstab", node(v), {"group_by": ["sex", "smoking"]})
               for v in (20.0, 25.0, 30.0, 35.0)]  # fmt: skip
    execute(engine, queries[0], populations=populations)
    statements: list[str] = []
    original = duckdb_dialect.run

    def counting(conn: sa.Connection, statement: Any, **kwargs: Any) -> Any:
        statements.append(kwargs["shape"][1])
        return original(conn, statement, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(duckdb_dialect, "run", counting)
        outcomes = execute_together(engine, queries, populations=populations)
    assert statements == ["together"]
    assert [answer(o) for o in outcomes] == alone(engine, queries)
    # Higher thresholds keep fewer rows: the answers are not one answer handed to all.
    selected = [o.selected for o in outcomes if isinstance(o, QueryOutcome)]
    assert selected == sorted(selected, reverse=True) and len(set(selected)) == 4


def test_without_a_known_population_each_query_runs_alone(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    node = lambda v: {"column": "bmi", "op": ">", "value": v}  # noqa: E731
    queries = [compile_spec(mixed_columns, "count", node(v), {}) for v in (20.0, 30.0)]
    outcomes = execute_together(engine, queries, populations=PopulationCache())
    assert [answer(o) for o in outcomes] == alone(engine, queries)
    assert duckdb_dialect.TEMPLATES.get((queries[0].shape, "together", 2)) is None


def test_only_counts_with_filter_values_on_duckdb_share_a_statement(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    with_value = compile_spec(mixed_columns, "count", {"column": "bmi", "op": ">", "value": 20.0}, {})
    no_value = compile_spec(mixed_columns, "count", {"column": "bmi", "op": "is_null"}, {})
    summary = compile_spec(mixed_columns, "summary", {"column": "bmi", "op": ">", "value": 20.0},
                           {"params": {"column": "systolic_bp"}})  # fmt: skip
    assert together_key(engine, with_value) is not None
    assert together_key(engine, no_value) is None  # every query of its shape is the same query
    assert together_key(engine, summary) is None
    with_withdrawals = compile_spec(
        mixed_columns, "count", {"column": "bmi", "op": ">", "value": 20.0}, {},
        patient_column="patient_id", withdrawn=TOKENS,
    )  # fmt: skip
    # Another consent predicate (here: withdrawals) is another shape, so never the same batch.
    assert together_key(engine, with_withdrawals) != together_key(engine, with_value)
    postgres = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert together_key(postgres, with_value) is None
    with pytest.raises(ValueError, match="one shape"):
        counted_together([with_value, with_withdrawals])
    with pytest.raises(ValueError, match="with filters"):
        counted_together([summary, summary])


def test_a_value_the_store_cannot_read_fails_only_its_own_query(
    token_store: tuple[sa.Engine, list[str]], mixed_columns: list[tuple[str, str]]
) -> None:
    engine, tokens = token_store
    node = lambda v: {"column": "patient_id", "op": "!=", "value": v}  # noqa: E731
    queries = [compile_spec(mixed_columns, "count", node(v), {}) for v in (tokens[0], "abc", tokens[1])]
    populations = PopulationCache()
    execute(engine, queries[0], populations=populations)
    first, bad, third = execute_together(engine, queries, populations=populations)
    assert isinstance(bad, ValueMismatch) and "abc" not in str(bad)
    assert [answer(first), answer(third)] == alone(engine, [queries[0], queries[2]])


def test_a_batch_of_more_groups_than_a_table_may_have_runs_each_query_under_its_own_limit(
    many_groups_duck_url: str,
) -> None:
    # The statement shared by a batch has every group of the consented rows, the queries' own among
    # them: more than a table may have does not mean that any one query has them.
    def counts(group_by: list[str], levels_of_a: tuple[int, ...]) -> list[CompiledQuery]:
        return [
            compile_spec(MANY_GROUPS_COLUMNS, "count", {"column": "a", "op": "<", "value": levels},
                         {"group_by": group_by})
            for levels in levels_of_a
        ]  # fmt: skip

    engine = store_engine(many_groups_duck_url)
    try:
        populations = PopulationCache()
        # By c, exactly as many groups as a table may have: one statement answers every query.
        within = counts(["c"], (100, 200))
        execute(engine, within[0], populations=populations)
        expected = alone(engine, within)
        with rows_fetched(engine) as fetched:
            outcomes = execute_together(engine, within, populations=populations)
        assert fetched == [MAX_GRID_CELLS]
        assert [answer(o) for o in outcomes] == expected
        # By a and b, 160,000 groups, of which the queries have 80,000, 100,000 and 120,000.
        beyond = counts(["a", "b"], (200, MAX_GRID_CELLS // MANY_GROUPS_SIDE, 300))
        expected = alone(engine, beyond[:2])
        with rows_fetched(engine) as fetched:
            *fitting, over = execute_together(engine, beyond, populations=populations)
        # The shared statement stops one group past the limit; each query then runs under its own.
        assert fetched[0] == MAX_GRID_CELLS + 1 and max(fetched) == MAX_GRID_CELLS + 1
        assert [answer(o) for o in fitting] == expected
        assert isinstance(over, QueryOutcome) and over.selected == 300 * MANY_GROUPS_SIDE
        with pytest.raises(TableTooLarge, match="more than disclosure control lays out"):
            over.frame  # noqa: B018 - the refusal is in building it
    finally:
        engine.dispose()
