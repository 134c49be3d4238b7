"""The compiled consent predicate keeps exactly the rows `ConsentFilter.admits` keeps of the consent classes
held by at least min_cell_count rows not marked withdrawn, on both databases, listed or per row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decision.models import ConsentFilter
from gateway.query.consent import ConsentClasses, consent_predicate
from gateway.query.population import ConsentValueCache, read_consent_classes

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
    conn: sa.Connection,
    rule: ConsentFilter,
    rows: list[tuple[str | None, bool | None]],
    *,
    listed: bool,
    min_cell_count: int = 1,
) -> set[int]:
    """The ids the compiled predicate keeps: per row, or (`listed`) from the table's consent classes as
    ConsentValueCache reads them."""
    conn.execute(TABLE.delete())
    conn.execute(
        TABLE.insert(), [{"id": i, "consent_duo": c, "consent_withdrawn": w} for i, (c, w) in enumerate(rows)]
    )
    classes = None
    if listed:
        classes = read_consent_classes(conn, TABLE.name, "consent_duo", "consent_withdrawn", 1000)
        assert classes is not None
    where = consent_predicate(
        rule, TABLE.c.consent_duo, TABLE.c.consent_withdrawn, conn.dialect.name,
        min_cell_count=min_cell_count, classes=classes,
    )  # fmt: skip
    return {r[0] for r in conn.execute(sa.select(TABLE.c.id).where(where))}


def expected(
    rule: ConsentFilter, rows: list[tuple[str | None, bool | None]], min_cell_count: int = 1
) -> set[int]:
    """The reference: `admits`, and the value held by at least `min_cell_count` rows not withdrawn."""
    sizes = Counter(codes for codes, withdrawn in rows if withdrawn is False)
    return {
        i
        for i, (codes, withdrawn) in enumerate(rows)
        if rule.admits(codes, withdrawn) and sizes[codes] >= min_cell_count
    }


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
@given(rule=filters, rows=rows_strategy, min_cell_count=st.integers(1, 4))
def test_duckdb_predicate_agrees_with_reference(
    duck_conn: sa.Connection,
    rule: ConsentFilter,
    rows: list[tuple[str | None, bool | None]],
    min_cell_count: int,
) -> None:
    want = expected(rule, rows, min_cell_count)
    assert kept(duck_conn, rule, rows, listed=False, min_cell_count=min_cell_count) == want
    assert kept(duck_conn, rule, rows, listed=True, min_cell_count=min_cell_count) == want


@pytest.mark.postgres
@FIXTURE_REUSE
@given(rule=filters, rows=rows_strategy, min_cell_count=st.integers(1, 4))
def test_postgres_predicate_agrees_with_reference(
    pg_conn: sa.Connection,
    rule: ConsentFilter,
    rows: list[tuple[str | None, bool | None]],
    min_cell_count: int,
) -> None:
    want = expected(rule, rows, min_cell_count)
    assert kept(pg_conn, rule, rows, listed=False, min_cell_count=min_cell_count) == want
    assert kept(pg_conn, rule, rows, listed=True, min_cell_count=min_cell_count) == want


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
    classes = ConsentClasses((("DUO:0000042", 12), (None, 40), ("x", 50)))
    where = consent_predicate(
        rule, TABLE.c.consent_duo, TABLE.c.consent_withdrawn, "duckdb", min_cell_count=10, classes=classes
    )
    compiled = where.compile(dialect=sa.create_engine("duckdb:///:memory:").dialect)
    assert "DUO:0000042" not in str(compiled)
    assert ["DUO:0000042"] in compiled.params.values()


CLASS_RULE = ConsentFilter(
    withdrawn_column="consent_withdrawn",
    consent_column="consent_duo",
    separator=" ",
    require_any_of=(("DUO:0000006", "DUO:0000042"),),
    allowed_codes=("DUO:0000006", "DUO:0000021", "DUO:0000022", "DUO:0000042"),
)


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "per-row"])
@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
def test_a_consent_class_below_min_cell_count_is_never_admitted(
    dialect: str, listed: bool, request: pytest.FixtureRequest
) -> None:
    """A class of one (the reviewer's ethics attack) and a class of min_cell_count - 1 are left out however
    permissive the rule; a class of min_cell_count is admitted. Rows marked withdrawn (or NULL) do not
    count towards their class, so a class of 10 rows of which one is withdrawn is a class of 9."""
    conn = request.getfixturevalue("duck_conn" if dialect == "duckdb" else "pg_conn")
    rows: list[tuple[str | None, bool | None]] = [
        ("DUO:0000042 DUO:0000021", False),  # a class of one
        *[("DUO:0000042 DUO:0000022", False)] * 9,  # min_cell_count - 1
        *[("DUO:0000006", False)] * 10,  # exactly min_cell_count: admitted
        *[("DUO:0000006 DUO:0000021", False)] * 9,  # 9, and withdrawn rows that do not count
        ("DUO:0000006 DUO:0000021", True),
        ("DUO:0000006 DUO:0000021", None),
        *[("DUO:0000042", False)] * 30,
        *[("DUO:0000042", True)] * 3,
    ]
    got = kept(conn, CLASS_RULE, rows, listed=listed, min_cell_count=10)
    admitted = {rows[i][0] for i in got}
    assert admitted == {"DUO:0000006", "DUO:0000042"}
    assert got == expected(CLASS_RULE, rows, 10) and len(got) == 40
    # With a threshold of 1 the rule alone decides (every non-withdrawn row of an allowed value).
    assert kept(conn, CLASS_RULE, rows, listed=listed, min_cell_count=1) == expected(CLASS_RULE, rows)
    assert len(expected(CLASS_RULE, rows)) == 1 + 9 + 10 + 9 + 30


def test_the_per_row_predicate_reads_its_own_table_through_an_alias() -> None:
    """Without the classes, the small ones are found by a subquery over an alias of the queried table, with
    min_cell_count bound (the population cache keys on it), and never correlated with the outer query."""
    table = sa.table(
        "ds_x__v1", sa.column("consent_duo", sa.Text), sa.column("consent_withdrawn", sa.Boolean)
    )
    where = consent_predicate(
        CLASS_RULE, table.c.consent_duo, table.c.consent_withdrawn, "duckdb", min_cell_count=17
    )
    select = sa.select(sa.func.count()).select_from(table).where(where)
    text = str(select.compile(dialect=sa.create_engine("duckdb:///:memory:").dialect))
    assert text.count("FROM ds_x__v1") == 2 and "FROM ds_x__v1 AS consent_classes" in text
    assert "HAVING count(*) >=" in text
    assert 17 in select.compile().params.values() and "17" not in text
    with pytest.raises(ValueError, match="min_cell_count"):
        consent_predicate(
            CLASS_RULE, table.c.consent_duo, table.c.consent_withdrawn, "duckdb", min_cell_count=0
        )


def test_consent_value_cache_reads_each_table_once_and_gives_up_on_many_values() -> None:
    engine = sa.create_engine("duckdb:///:memory:", poolclass=sa.pool.StaticPool)
    with engine.begin() as conn:
        TABLE.create(conn)
        conn.execute(
            TABLE.insert(),
            [{"id": i, "consent_duo": f"DUO:{i % 3}", "consent_withdrawn": i % 5 == 0} for i in range(30)],
        )
    cache = ConsentValueCache(max_values=3)
    read = cache.get(engine, "consent_rows", "consent_duo", "consent_withdrawn")
    # Each of the 3 values on 10 rows, of which 2 are marked withdrawn (ids divisible by 5).
    assert read == ConsentClasses((("DUO:0", 8), ("DUO:1", 8), ("DUO:2", 8)))
    with engine.begin() as conn:  # a published version never changes: the values are not read again
        conn.execute(TABLE.insert(), [{"id": 99, "consent_duo": "DUO:9", "consent_withdrawn": False}])
    assert cache.get(engine, "consent_rows", "consent_duo", "consent_withdrawn") is read
    # 4 values now: too many to list.
    assert (
        ConsentValueCache(max_values=3).get(engine, "consent_rows", "consent_duo", "consent_withdrawn")
        is None
    )


def test_consent_value_cache_does_not_remember_a_failed_read() -> None:
    engine = sa.create_engine("duckdb:///:memory:", poolclass=sa.pool.StaticPool)
    cache = ConsentValueCache()
    assert cache.get(engine, "consent_rows", "consent_duo", "consent_withdrawn") is None  # no such table yet
    assert len(cache) == 0
    with engine.begin() as conn:
        TABLE.create(conn)
        conn.execute(
            TABLE.insert(),
            [
                {"id": 1, "consent_duo": "DUO:0000042", "consent_withdrawn": False},
                {"id": 2, "consent_duo": None, "consent_withdrawn": False},
            ],
        )
    assert cache.get(engine, "consent_rows", "consent_duo", "consent_withdrawn") == ConsentClasses(
        (("DUO:0000042", 1), (None, 1))
    )
