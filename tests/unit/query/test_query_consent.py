"""The compiled consent predicate keeps exactly the rows `ConsentFilter.admits` keeps, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decision.models import ConsentFilter
from gateway.query.consent import consent_predicate
from gateway.query.population import ConsentValueCache

CODES = ["DUO:0000004", "DUO:0000006", "DUO:0000007", "DUO:0000042", "DUO:0000045", "DUO:0000046"]

consent_values = st.one_of(
    st.none(),
    st.just(""),
    st.lists(st.sampled_from(CODES), min_size=1, max_size=4).map(" ".join),
    # Doubled, leading and trailing separators are malformed.
    st.lists(st.sampled_from([*CODES, ""]), min_size=1, max_size=4).map(" ".join),
)
rows_strategy = st.lists(
    st.tuples(consent_values, st.sampled_from([True, False, None])), min_size=1, max_size=15
)
filters = st.builds(
    lambda require, allowed: ConsentFilter(
        withdrawn_column="consent_withdrawn",
        consent_column="consent_duo",
        separator=" ",
        require_any_of=tuple(tuple(g) for g in require),
        allowed_codes=tuple(allowed),
    ),
    st.lists(st.lists(st.sampled_from(CODES), max_size=3, unique=True), max_size=3),
    st.lists(st.sampled_from(CODES), max_size=len(CODES), unique=True),
)

TABLE = sa.Table(
    "consent_rows",
    sa.MetaData(),
    sa.Column("id", sa.Integer),
    sa.Column("consent_duo", sa.Text),
    sa.Column("consent_withdrawn", sa.Boolean),
)


def kept(
    conn: sa.Connection, rule: ConsentFilter, rows: list[tuple[str | None, bool | None]], *, listed: bool
) -> set[int]:
    """The ids the compiled predicate keeps: per row, or (`listed`) from the table's distinct values."""
    conn.execute(TABLE.delete())
    conn.execute(
        TABLE.insert(), [{"id": i, "consent_duo": c, "consent_withdrawn": w} for i, (c, w) in enumerate(rows)]
    )
    values = [r[0] for r in conn.execute(sa.select(TABLE.c.consent_duo).distinct())] if listed else None
    where = consent_predicate(
        rule, TABLE.c.consent_duo, TABLE.c.consent_withdrawn, conn.dialect.name, values=values
    )
    return {r[0] for r in conn.execute(sa.select(TABLE.c.id).where(where))}


def expected(rule: ConsentFilter, rows: list[tuple[str | None, bool | None]]) -> set[int]:
    return {i for i, (codes, withdrawn) in enumerate(rows) if rule.admits(codes, withdrawn)}


@pytest.fixture
def duck_conn() -> Iterator[sa.Connection]:
    engine = sa.create_engine("duckdb:///:memory:")
    with engine.connect() as conn:
        TABLE.create(conn)
        yield conn
    engine.dispose()


@pytest.fixture
def pg_conn(pg_url: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        TABLE.create(conn)
        yield conn
    engine.dispose()


FIXTURE_REUSE = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FIXTURE_REUSE
@given(rule=filters, rows=rows_strategy)
def test_duckdb_predicate_agrees_with_reference(
    duck_conn: sa.Connection, rule: ConsentFilter, rows: list[tuple[str | None, bool | None]]
) -> None:
    assert kept(duck_conn, rule, rows, listed=False) == expected(rule, rows)
    assert kept(duck_conn, rule, rows, listed=True) == expected(rule, rows)


@pytest.mark.postgres
@FIXTURE_REUSE
@given(rule=filters, rows=rows_strategy)
def test_postgres_predicate_agrees_with_reference(
    pg_conn: sa.Connection, rule: ConsentFilter, rows: list[tuple[str | None, bool | None]]
) -> None:
    assert kept(pg_conn, rule, rows, listed=False) == expected(rule, rows)
    assert kept(pg_conn, rule, rows, listed=True) == expected(rule, rows)


@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
def test_documented_edge_cases(dialect: str, request: pytest.FixtureRequest) -> None:
    conn = request.getfixturevalue("duck_conn" if dialect == "duckdb" else "pg_conn")
    rule = ConsentFilter(
        withdrawn_column="consent_withdrawn",
        consent_column="consent_duo",
        separator=" ",
        require_any_of=(),
        allowed_codes=("DUO:0000042",),
    )
    rows: list[tuple[str | None, bool | None]] = [
        ("", False),  # PostgreSQL splits '' into no codes at all; it must still be excluded
        ("DUO:0000042", False),
        ("DUO:0000042", None),
        (None, False),
        ("DUO:0000042 ", False),
    ]
    assert kept(conn, rule, rows, listed=False) == expected(rule, rows) == {1}
    assert kept(conn, rule, rows, listed=True) == {1}


def test_listed_values_are_bound_parameters_not_sql_text() -> None:
    rule = ConsentFilter(
        withdrawn_column="consent_withdrawn", consent_column="consent_duo", separator=" ",
        require_any_of=(), allowed_codes=("DUO:0000042",),
    )  # fmt: skip
    where = consent_predicate(
        rule, TABLE.c.consent_duo, TABLE.c.consent_withdrawn, "duckdb", values=["DUO:0000042", None, "x"]
    )
    compiled = where.compile(dialect=sa.create_engine("duckdb:///:memory:").dialect)
    assert "DUO:0000042" not in str(compiled)
    assert ["DUO:0000042"] in compiled.params.values()


def test_consent_value_cache_reads_each_table_once_and_gives_up_on_many_values() -> None:
    engine = sa.create_engine("duckdb:///:memory:", poolclass=sa.pool.StaticPool)
    with engine.begin() as conn:
        TABLE.create(conn)
        conn.execute(TABLE.insert(), [{"id": i, "consent_duo": f"DUO:{i % 3}"} for i in range(30)])
    cache = ConsentValueCache(max_values=3)
    assert sorted(cache.get(engine, "consent_rows", "consent_duo") or ()) == ["DUO:0", "DUO:1", "DUO:2"]
    with engine.begin() as conn:  # a published version never changes: the values are not read again
        conn.execute(TABLE.insert(), [{"id": 99, "consent_duo": "DUO:9"}])
    assert len(cache.get(engine, "consent_rows", "consent_duo") or ()) == 3
    assert ConsentValueCache(max_values=3).get(engine, "consent_rows", "consent_duo") is None  # 4 values


def test_consent_value_cache_does_not_remember_a_failed_read() -> None:
    engine = sa.create_engine("duckdb:///:memory:", poolclass=sa.pool.StaticPool)
    cache = ConsentValueCache()
    assert cache.get(engine, "consent_rows", "consent_duo") is None  # no such table yet
    assert len(cache) == 0
    with engine.begin() as conn:
        TABLE.create(conn)
        conn.execute(TABLE.insert(), [{"id": 1, "consent_duo": "DUO:0000042"}])
    assert cache.get(engine, "consent_rows", "consent_duo") == ("DUO:0000042",)
