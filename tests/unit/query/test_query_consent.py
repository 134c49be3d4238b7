"""The compiled consent predicate keeps exactly the rows `ConsentFilter.admits` keeps, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decision.models import ConsentFilter
from gateway.query.consent import consent_predicate

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


def kept(conn: sa.Connection, rule: ConsentFilter, rows: list[tuple[str | None, bool | None]]) -> set[int]:
    conn.execute(TABLE.delete())
    conn.execute(
        TABLE.insert(), [{"id": i, "consent_duo": c, "consent_withdrawn": w} for i, (c, w) in enumerate(rows)]
    )
    where = consent_predicate(rule, TABLE.c.consent_duo, TABLE.c.consent_withdrawn, conn.dialect.name)
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
    assert kept(duck_conn, rule, rows) == expected(rule, rows)


@pytest.mark.postgres
@FIXTURE_REUSE
@given(rule=filters, rows=rows_strategy)
def test_postgres_predicate_agrees_with_reference(
    pg_conn: sa.Connection, rule: ConsentFilter, rows: list[tuple[str | None, bool | None]]
) -> None:
    assert kept(pg_conn, rule, rows) == expected(rule, rows)


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
    assert kept(conn, rule, rows) == expected(rule, rows) == {1}
