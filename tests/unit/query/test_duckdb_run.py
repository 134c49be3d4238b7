"""duckdb_dialect.run: a compiled select on DuckDB's own connection, its parse kept per connection, its
values bound on every run, and the same rows SQLAlchemy's own execution returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from query_helpers import TABLE, compile_spec

from gateway.query import duckdb_dialect, single_thread_engine
from gateway.query.execute import ONE_ROW_GROUP


def compiled_main(
    engine: sa.Engine, columns: list[tuple[str, str]], kind: str, node: Any, **extra: Any
) -> Any:
    return compile_spec(columns, kind, node, extra, engine.dialect.name)


def kept(conn: sa.Connection) -> dict[str, Any]:
    parsed: dict[str, Any] = conn.connection.info.get(duckdb_dialect._PARSED, {})
    return parsed


def same_rows(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> bool:
    """The same rows in any order (a GROUP BY without ORDER BY has none); sums equal to rounding, as a
    parallel aggregate may add in another order."""
    if len(got) != len(expected):
        return False
    order = lambda row: tuple(repr(v) for v in row if not isinstance(v, float))  # noqa: E731
    return all(
        a == pytest.approx(b, rel=1e-12) if isinstance(b, float) else a == b
        for g, e in zip(sorted(got, key=order), sorted(expected, key=order), strict=True)
        for a, b in zip(g, e, strict=True)
    )


SHAPES: list[tuple[str, Any, dict[str, Any]]] = [
    ("count", {"column": "bmi", "op": ">", "value": 27.5}, {}),
    ("crosstab", {"column": "icd10", "op": "in", "value": ["I10", "E11.9", "C18.9"]}, {"group_by": ["sex"]}),
    ("summary", {"column": "survival_days", "op": "between", "value": [100, 2000]},
     {"group_by": ["outcome"], "params": {"column": "bmi"}}),
    ("histogram", {"not": {"column": "sex", "op": "=", "value": "M"}},
     {"group_by": ["sex"], "params": {"column": "bmi", "edges": [20, 25, 30, 35]}}),
    ("quantiles", {"column": "admission_date", "op": ">", "value": "2018-01-01"},
     {"params": {"column": "systolic_bp", "probs": [0.25, 0.5, 0.9]}}),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "node", "extra"), SHAPES, ids=[s[0] for s in SHAPES])
def test_rows_equal_sqlalchemy_execution(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]], kind: str, node: Any, extra: dict[str, Any]
) -> None:
    compiled = compiled_main(engine, mixed_columns, kind, node, **extra)
    with engine.connect() as conn:
        for statement in (compiled.main, compiled.sizes, compiled.selected):
            expected = [tuple(row) for row in conn.execute(statement).all()]
            assert expected, "a select of the mixed table returns rows"
            assert same_rows(duckdb_dialect.run(conn, statement), expected)
            assert same_rows(duckdb_dialect.run(conn, statement), expected)  # the kept parse, run again


def test_a_parse_is_kept_per_text_and_each_run_binds_its_own_values(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    low = compiled_main(engine, mixed_columns, "count", {"column": "bmi", "op": ">", "value": 20.0})
    high = compiled_main(engine, mixed_columns, "count", {"column": "bmi", "op": ">", "value": 33.0})
    with engine.connect() as conn:
        ((n_low,),) = duckdb_dialect.run(conn, low.main)
        ((n_high,),) = duckdb_dialect.run(conn, high.main)
        assert len(kept(conn)) == 1  # one text, two values
        assert n_low > n_high > 0
        assert [(n_low,)] == [tuple(r) for r in conn.execute(low.main).all()]
        assert [(n_high,)] == [tuple(r) for r in conn.execute(high.main).all()]


def test_in_lists_of_each_length_get_their_own_text(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    answers = []
    with engine.connect() as conn:
        for values in (["I10"], ["I10", "E11.9"], ["I10", "E11.9", "C18.9"]):
            compiled = compiled_main(
                engine, mixed_columns, "count", {"column": "icd10", "op": "in", "value": values}
            )
            rows = duckdb_dialect.run(conn, compiled.main)
            assert rows == [tuple(r) for r in conn.execute(compiled.main).all()]
            answers.append(rows[0][0])
        assert len(kept(conn)) == 3
    assert answers[0] < answers[1] < answers[2]


def test_parses_kept_are_bounded_least_recently_used_first(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(duckdb_dialect, "PARSED_PER_CONNECTION", 2)
    ops = ["<", ">", "="]
    statements = {
        op: compiled_main(engine, mixed_columns, "count", {"column": "bmi", "op": op, "value": 27.5}).main
        for op in ops
    }
    with engine.connect() as conn:
        duckdb_dialect.run(conn, statements["<"])
        duckdb_dialect.run(conn, statements[">"])
        duckdb_dialect.run(conn, statements["<"])  # "<" is now the most recently used
        duckdb_dialect.run(conn, statements["="])
        texts = list(kept(conn))
    assert len(texts) == 2
    assert not any(" > " in t for t in texts)  # the least recently used went
    assert any(" < " in t for t in texts) and any(" = " in t for t in texts)


def test_at_most_fetches_no_more_rows_and_drops_the_rest(
    engine: sa.Engine, mixed_columns: list[tuple[str, str]]
) -> None:
    by_patient = compiled_main(engine, mixed_columns, "count", None, group_by=["patient_id"])
    with engine.connect() as conn:
        every = duckdb_dialect.run(conn, by_patient.main)
        assert len(every) > 10
        first = duckdb_dialect.run(conn, by_patient.main, at_most=10)
        assert len(first) == 10 and set(first) <= set(every)
        # The rest are gone: the connection holds no result of the statement cut short (nor what
        # computing it took).
        driver = conn.connection.driver_connection
        assert driver is not None and driver.fetchall() == []
        assert same_rows(duckdb_dialect.run(conn, by_patient.main, at_most=len(every) + 1), every)


def test_a_value_duckdb_cannot_convert_is_a_driver_error(engine: sa.Engine) -> None:
    table = sa.table(TABLE, sa.column("bmi", sa.Double()))
    statement = sa.select(sa.func.count()).select_from(table).where(sa.cast(sa.literal("x"), sa.Double()) > 1)
    with engine.connect() as conn, pytest.raises(duckdb_dialect.duckdb.ConversionException):
        duckdb_dialect.run(conn, statement)


@pytest.mark.parametrize(("kind", "node", "extra"), SHAPES, ids=[s[0] for s in SHAPES])
def test_the_single_thread_engine_answers_as_the_store_does(
    engine: sa.Engine, duck_url: str, mixed_columns: list[tuple[str, str]], kind: str, node: Any,
    extra: dict[str, Any],
) -> None:  # fmt: skip
    single = single_thread_engine(duck_url)
    assert single is not None
    compiled = compiled_main(engine, mixed_columns, kind, node, **extra)
    try:
        with engine.connect() as conn, single.connect() as one:
            for statement in (compiled.main, compiled.sizes, compiled.selected):
                expected = [tuple(row) for row in conn.execute(statement).all()]
                assert expected
                assert same_rows(duckdb_dialect.run(one, statement), expected)
    finally:
        single.dispose()


@pytest.mark.parametrize("options", ["", "?access_mode=read_only"])
def test_the_single_thread_engine_runs_on_one_thread_beside_the_store(
    engine: sa.Engine, duck_url: str, options: str
) -> None:
    single = single_thread_engine(duck_url + options)
    assert single is not None
    try:
        with engine.connect() as conn, single.connect() as one:
            # Both open the same file in one process, each with its own setting.
            if (os.cpu_count() or 1) > 1:
                assert conn.exec_driver_sql("SELECT current_setting('threads')").scalar() > 1
            assert one.exec_driver_sql("SELECT current_setting('threads')").scalar() == 1
            count = f'SELECT count(*) FROM "{TABLE}"'
            assert one.exec_driver_sql(count).scalar() == conn.exec_driver_sql(count).scalar() > 0
            with pytest.raises(sa.exc.DBAPIError, match="read-only"):
                one.exec_driver_sql(f'DELETE FROM "{TABLE}"')
    finally:
        single.dispose()


@pytest.mark.parametrize(
    "url", ["duckdb:///:memory:", "duckdb:///", "sqlite:///x.db", "postgresql+psycopg://u@h/db"]
)
def test_only_a_duckdb_file_gets_a_single_thread_engine(url: str) -> None:
    assert single_thread_engine(url) is None


def test_one_row_group_is_the_most_rows_duckdb_writes_in_one(tmp_path: Path) -> None:
    with duckdb_dialect.duckdb.connect(str(tmp_path / "groups.duckdb")) as con:
        for rows in (ONE_ROW_GROUP, ONE_ROW_GROUP + 1):
            con.execute(f"CREATE TABLE t{rows} AS SELECT range AS v FROM range({rows})")
        con.execute("CHECKPOINT")
        groups = {
            rows: con.execute(
                f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t{rows}')"
            ).fetchone()
            for rows in (ONE_ROW_GROUP, ONE_ROW_GROUP + 1)
        }
    assert groups == {ONE_ROW_GROUP: (1,), ONE_ROW_GROUP + 1: (2,)}
