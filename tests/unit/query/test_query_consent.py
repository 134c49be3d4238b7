"""The compiled consent predicate keeps exactly the rows `ConsentFilter.admits` keeps of the consent classes
held by at least min_cell_count rows not marked withdrawn (and, once withdrawals are recorded after ingest,
of no withdrawn patient), on both databases, listed or per row."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from query_helpers import obligations

from gateway.decision.models import ConsentFilter
from gateway.query import compile_query, parse_query_spec
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
    assert read is not None and read.counts == (("DUO:0", 8), ("DUO:1", 8), ("DUO:2", 8))
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
    read = cache.get(engine, "consent_rows", "consent_duo", "consent_withdrawn")
    assert read is not None and read.counts == (("DUO:0000042", 1), (None, 1))


# -- consent classes after withdrawals recorded after ingest ---------------------------------------------

PATIENTS = sa.Table(
    "consent_patients",
    sa.MetaData(),
    sa.Column("patient_id", sa.Text),
    sa.Column("consent_duo", sa.Text),
    sa.Column("consent_withdrawn", sa.Boolean),
    sa.Column("bmi", sa.Float),
)
PATIENT_COLUMNS = [
    ("patient_id", "string"), ("consent_duo", "string"), ("consent_withdrawn", "bool"), ("bmi", "double")
]  # fmt: skip


def token(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


# Exactly min_cell_count (10) patients hold "DUO:0000006"; "DUO:0000042" has 12 and one row marked
# withdrawn in the table; one "DUO:0000042" row has no pseudonym at all.
PATIENT_ROWS: list[tuple[str | None, str, bool]] = [
    *[(token(i), "DUO:0000006", False) for i in range(10)],
    *[(token(i), "DUO:0000042", False) for i in range(10, 22)],
    (token(22), "DUO:0000042", True),
    (None, "DUO:0000042", False),
]


def fill_patients(conn: sa.Connection) -> None:
    conn.execute(PATIENTS.delete())
    conn.execute(
        PATIENTS.insert(),
        [{"patient_id": p, "consent_duo": c, "consent_withdrawn": w, "bmi": 20.0 + i}
         for i, (p, c, w) in enumerate(PATIENT_ROWS)],
    )  # fmt: skip


def kept_patients(conn: sa.Connection, withdrawals: list[str], *, listed: bool) -> set[str | None]:
    """The pseudonyms the compiled predicate keeps under CLASS_RULE with min_cell_count 10, the classes
    counted without `withdrawals` (`listed`) or found by the per-row subquery."""
    classes = None
    if listed:
        classes = read_consent_classes(
            conn, PATIENTS.name, "consent_duo", "consent_withdrawn", 1000,
            patient_column="patient_id", withdrawals=withdrawals,
        )  # fmt: skip
        assert classes is not None
    where = consent_predicate(
        CLASS_RULE, PATIENTS.c.consent_duo, PATIENTS.c.consent_withdrawn, conn.dialect.name,
        min_cell_count=10, classes=classes, patient=PATIENTS.c.patient_id, withdrawals=withdrawals,
    )  # fmt: skip
    return {r[0] for r in conn.execute(sa.select(PATIENTS.c.patient_id).where(where))}


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "per-row"])
@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
def test_a_class_that_withdrawals_take_below_min_cell_count_is_no_longer_admitted(
    dialect: str, listed: bool, request: pytest.FixtureRequest
) -> None:
    """Attack: a class of exactly min_cell_count patients is admitted; one of them withdraws after ingest.
    Counted as published, the class still held 10 rows and was admitted, so two rules (one admitting it,
    one not) differed by the 9 patients left: now it holds 9 and neither rule admits any of it. The class
    of 12 (one row marked withdrawn aside) keeps 10 after two withdrawals (one spelled as plain hex) and
    stays admitted; once withdrawals are listed, a row without a pseudonym counts for nothing."""
    conn = request.getfixturevalue("duck_conn" if dialect == "duckdb" else "pg_conn")
    PATIENTS.create(conn)
    fill_patients(conn)
    ethics, general = {token(i) for i in range(10)}, {token(i) for i in range(10, 22)}
    assert kept_patients(conn, [], listed=listed) == ethics | general | {None}
    got = kept_patients(conn, [token(3)], listed=listed)
    assert got == general, "the class of 10 less one withdrawal is left out whole"
    after = kept_patients(conn, [token(3), token(10), uuid.UUID(token(11)).hex], listed=listed)
    assert after == general - {token(10), token(11)}
    assert kept_patients(conn, [token(3), token(10), token(11), token(12)], listed=listed) == set()


def test_classes_counted_with_other_withdrawals_are_refused() -> None:
    """Listing classes counted before a withdrawal would admit a class on patients no query sees."""
    as_published = ConsentClasses((("DUO:0000006", 10),))
    with pytest.raises(ValueError, match="other withdrawals"):
        consent_predicate(
            CLASS_RULE, PATIENTS.c.consent_duo, PATIENTS.c.consent_withdrawn, "duckdb", min_cell_count=10,
            classes=as_published, patient=PATIENTS.c.patient_id, withdrawals=[token(3)],
        )  # fmt: skip
    with pytest.raises(ValueError, match="patient column"):
        consent_predicate(
            CLASS_RULE, PATIENTS.c.consent_duo, PATIENTS.c.consent_withdrawn, "duckdb", min_cell_count=10,
            withdrawals=[token(3)],
        )  # fmt: skip


@pytest.fixture
def patients_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("duckdb:///:memory:", poolclass=sa.pool.StaticPool)
    with engine.begin() as conn:
        PATIENTS.create(conn)
        fill_patients(conn)
    yield engine
    engine.dispose()


def class_reads(engine: sa.Engine) -> list[str]:
    """The statements that read the consent classes on `engine`, as they run from now on."""
    reads: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FILTER (WHERE" in statement and "GROUP BY" in statement:
            reads.append(statement)

    return reads


def test_the_classes_are_counted_again_once_per_withdrawal_and_not_per_query(
    patients_engine: sa.Engine,
) -> None:
    """Queries after a withdrawal list the classes counted without it: the store is read once, by the
    first query after the withdrawal, whatever the number of queries, rules or spellings of the same
    withdrawals; one more withdrawal is one more read."""
    cache = ConsentValueCache()
    reads = class_reads(patients_engine)
    classes = cache.get(patients_engine, PATIENTS.name, "consent_duo", "consent_withdrawn")
    assert classes is not None and len(reads) == 1

    def population(withdrawn: list[str], value: float = 20.0, rule: ConsentFilter = CLASS_RULE) -> int:
        spec = parse_query_spec(
            {"dataset": "p", "agreement": "DSA-1", "purpose": {"duo": ["DUO:0000042"]}, "kind": "count",
             "filters": {"column": "bmi", "op": ">", "value": value}}
        )  # fmt: skip
        compiled = compile_query(
            spec, PATIENTS.name, PATIENT_COLUMNS, obligations(("bmi",), rule), "duckdb",
            patient_column="patient_id", withdrawn=list(withdrawn), consent_classes=classes,
        )  # fmt: skip
        assert "consent_classes" not in str(compiled.population), "the classes are listed, not per row"
        with patients_engine.connect() as conn:
            return int(conn.execute(compiled.population).scalar_one())

    assert population([]) == 10 + 12 + 1 and len(reads) == 1
    for i in range(20):  # the pipeline reads the withdrawals anew for every query: a new list each time
        assert population([token(3)], value=20.0 + i) == 12
    assert len(reads) == 2, "one count without the withdrawal, not one per query"
    wider = CLASS_RULE.model_copy(update={"require_any_of": ()})
    assert population([uuid.UUID(token(3)).hex], rule=wider) == 12 and len(reads) == 2
    for i in range(20):
        assert population([token(3), token(10)], value=20.0 + i) == 11
    assert len(reads) == 3, "a new withdrawal is counted once"
    assert population([token(3)]) == 12 and len(reads) == 3


def test_a_failed_count_after_a_withdrawal_falls_back_to_the_per_row_predicate_and_is_tried_again() -> None:
    """A store that cannot be read when the classes are counted again does not admit the classes as
    published: that query's predicate finds the large classes per row (withdrawals left out in its
    subquery), and the next query counts again."""
    calls: list[str] = []

    def recount(patient_column: str, tokens: Sequence[str], digest: str) -> ConsentClasses | None:
        calls.append(digest)
        if len(calls) == 1:
            raise sa.exc.OperationalError("select", {}, Exception("store unavailable"))
        return ConsentClasses((("DUO:0000006", 9), ("DUO:0000042", 12)), withdrawals=digest, recount=recount)

    classes = ConsentClasses((("DUO:0000006", 10), ("DUO:0000042", 12)), recount=recount)
    spec = parse_query_spec(
        {"dataset": "p", "agreement": "DSA-1", "purpose": {"duo": ["DUO:0000042"]}, "kind": "count"}
    )

    def compiled() -> Any:
        return compile_query(
            spec, PATIENTS.name, PATIENT_COLUMNS, obligations(("bmi",), CLASS_RULE), "duckdb",
            patient_column="patient_id", withdrawn=[token(3)], consent_classes=classes,
        ).population  # fmt: skip

    first = compiled()
    text = str(first)
    assert "AS consent_classes" in text and text.count("list_contains") == 2  # withdrawals in the subquery
    second = compiled()
    assert len(calls) == 2 and "consent_classes" not in str(second)
    assert ["DUO:0000042"] in [b.effective_value for b in second._generate_cache_key().bindparams]
