"""Compilation: obligations enforced, values checked against column types, no value ever in the SQL text."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from query_helpers import CONSENT, TABLE, obligations
from sqlalchemy.dialects import postgresql

from gateway.query import (
    ColumnNotAllowed,
    QueryError,
    QuerySpecError,
    UnknownColumn,
    UnsupportedStore,
    compile_query,
    parse_query_spec,
)
from gateway.query.columns import DatasetColumn, python_value
from gateway.query.consent import ConsentClasses

COLUMNS = [
    ("patient_id", "string"),
    ("sex", "string"),
    ("bmi", "double"),
    ("systolic_bp", "int32"),
    ("admission_date", "date32[day]"),
    ("seen_at", "timestamp[us, tz=UTC]"),
    ("event", "bool"),
    ("blob", "binary"),
    ("n", "int64"),
    ("consent_duo", "string"),
    ("consent_withdrawn", "bool"),
]
ALLOWED = ("sex", "bmi", "systolic_bp", "admission_date", "seen_at", "event", "blob", "n", "ghost")
# A consent column's classes (value, rows not marked withdrawn), as ConsentValueCache reads them.
CLASSES = ConsentClasses(
    (("DUO:0000006 DUO:0000007", 4), ("DUO:0000042", 700), ("DUO:0000042 DUO:0000046", 15), (None, 30))
)


def query(**changes: Any) -> Any:
    base = {"dataset": "mixed", "agreement": "DSA-1", "purpose": {"duo": ["DUO:0000042"]}, "kind": "count"}
    return parse_query_spec({**base, **changes})


def compile_(spec: Any, dialect: str = "duckdb", columns: list[tuple[str, str]] = COLUMNS, **kw: Any) -> Any:
    return compile_query(spec, TABLE, columns, obligations(ALLOWED, **kw), dialect)


def leaf(column: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"column": column, "op": op, "value": value}


@pytest.mark.parametrize(
    ("spec", "error", "field"),
    [
        (query(group_by=["patient_id"]), ColumnNotAllowed, "group_by[0]"),
        (query(filters={"and": [leaf("bmi", ">", 1), leaf("patient_id", "=", "x")]}), ColumnNotAllowed,
         "filters.and[1].column"),
        (query(kind="summary", params={"column": "consent_duo"}), ColumnNotAllowed, "params.column"),
        (query(filters={"not": leaf("ghost", "=", 1)}), UnknownColumn, "filters.not.column"),
        (query(filters={"or": [leaf("bmi", "<", 1), leaf("bmi", ">", "high")]}), QuerySpecError,
         "filters.or[1].value"),
        (query(filters=leaf("bmi", "in", [1, 2, "x"])), QuerySpecError, "filters.value[2]"),
        (query(filters=leaf("sex", "=", 1)), QuerySpecError, "filters.value"),
        (query(filters=leaf("event", "=", 1)), QuerySpecError, "filters.value"),
        (query(filters=leaf("event", "<", True)), QuerySpecError, "filters.op"),
        (query(filters=leaf("admission_date", ">", "01/02/2020")), QuerySpecError, "filters.value"),
        (query(filters=leaf("seen_at", ">", "2020-01-01T00:00:00")), QuerySpecError, "filters.value"),
        (query(filters=leaf("bmi", "between", [30, 20])), QuerySpecError, "filters.value"),
        (query(filters=leaf("blob", "=", "x")), QuerySpecError, "filters.column"),
        (query(group_by=["blob"]), QuerySpecError, "group_by[0]"),
        (query(group_by=["sex", "n"]), QuerySpecError, "group_by[1]"),
        (query(kind="summary", params={"column": "sex"}), QuerySpecError, "params.column"),
        (query(kind="quantiles", params={"column": "admission_date", "probs": [0.5]}), QuerySpecError,
         "params.column"),
        (query(kind="histogram", params={"column": "event", "edges": [0, 1]}), QuerySpecError,
         "params.column"),
    ],
)  # fmt: skip
def test_bad_query_names_its_field(spec: Any, error: type[QueryError], field: str) -> None:
    with pytest.raises(error) as caught:
        compile_(spec)
    assert type(caught.value) is error
    assert caught.value.field == field


def test_an_unsupported_dialect_is_refused() -> None:
    with pytest.raises(UnsupportedStore):
        compile_(query(), dialect="sqlite")


def test_missing_or_mistyped_consent_columns_fail_closed() -> None:
    without = [c for c in COLUMNS if c[0] != "consent_withdrawn"]
    with pytest.raises(UnknownColumn) as caught:
        compile_(query(), columns=without)
    assert caught.value.field == "obligations.consent_filter.withdrawn_column"
    mistyped = [(n, "string" if n == "consent_withdrawn" else t) for n, t in COLUMNS]
    with pytest.raises(QueryError) as caught:
        compile_(query(), columns=mistyped)
    assert caught.value.field == "obligations.consent_filter.withdrawn_column"


def test_valid_values_of_every_type_compile() -> None:
    node = {
        "and": [
            leaf("admission_date", "between", ["2019-01-01", "2020-12-31"]),
            leaf("seen_at", "<", "2021-01-01T00:00:00+00:00"),
            leaf("event", "in", [True]),
            leaf("systolic_bp", ">=", 120.5),
            leaf("bmi", "!=", 25),
            leaf("sex", "is_null", False),
        ]
    }
    for dialect in ("duckdb", "postgresql"):
        compile_(query(filters=node, group_by=["sex", "event", "admission_date"]), dialect)


# Each is a form `date.fromisoformat` or `datetime.fromisoformat` reads; docs/queries.md allows one form per
# type, so that a value has no second spelling to count apart against the identical-query limit.
_DATE_RESPELLINGS = ["20180101", "2018-W01-1", "2018W011", "2018-001", "2018-01-01T00:00:00", "2018-01-01\n"]
_TIMESTAMP_RESPELLINGS = [
    "20180101T000000Z", "2018-01-01 00:00:00Z", "2018-01-01t00:00:00Z", "2018-W01-1T00:00:00Z",
    "2018-01-01T00:00Z", "2018-01-01T00Z", "2018-01-01T00:00:00,5Z", "2018-01-01T00:00:00.1234567Z",
    "2018-01-01T00:00:00+0100", "2018-01-01T00:00:00+01", "2018-01-01T00:00:00+01:00:30",
    "2018-01-01T00:00:00+05:75", "2018-01-01", "0001-01-01T00:00:00+01:00",
]  # fmt: skip


@pytest.mark.parametrize(
    ("column", "good", "bad"),
    [("admission_date", "2018-01-02", v) for v in _DATE_RESPELLINGS]
    + [("seen_at", "2018-01-02T00:00:00Z", v) for v in _TIMESTAMP_RESPELLINGS],
)
def test_a_date_or_timestamp_in_an_undocumented_form_is_refused_naming_its_field(
    column: str, good: str, bad: str
) -> None:
    with pytest.raises(QuerySpecError) as caught:
        compile_(query(filters={"and": [leaf("sex", "=", "F"), leaf(column, "in", [good, bad])]}))
    assert caught.value.field == "filters.and[1].value[1]"
    assert ("YYYY-MM-DD" if column == "admission_date" else "YYYY-MM-DDTHH:MM:SS") in str(caught.value)


def test_the_documented_date_and_timestamp_forms_are_read() -> None:
    zoned = DatasetColumn("seen_at", "timestamp[us, tz=UTC]")
    utc = dt.UTC
    assert python_value(DatasetColumn("day", "date32[day]"), "2018-01-01") == dt.date(2018, 1, 1)
    assert python_value(zoned, "2018-01-01T00:00:00Z") == dt.datetime(2018, 1, 1, tzinfo=utc)
    assert python_value(zoned, "2018-01-01T01:00:00.5+01:00") == dt.datetime(2018, 1, 1, 0, 0, 0, 500000, utc)
    assert python_value(zoned, "9999-12-31T23:59:59.999999-00:00") == dt.datetime.max.replace(tzinfo=utc)
    naive = DatasetColumn("visit_at", "timestamp[us]")
    assert python_value(naive, "2018-01-01T08:00:00.123456") == dt.datetime(2018, 1, 1, 8, 0, 0, 123456)
    for bad in ("2018-01-01T08:00:00Z", "2018-01-01 08:00:00", "20180101T080000"):
        with pytest.raises(ValueError, match="without a UTC offset"):
            python_value(naive, bad)


SECRET_VALUES = ["Zq-SECRET-1", 987654.321, "1999-12-31", 4242, "DUO:0000045", "DUO:0000046"]


@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
@pytest.mark.parametrize("kind", ["count", "summary", "histogram", "quantiles"])
def test_values_are_bound_never_written_into_sql(dialect: str, kind: str) -> None:
    params = {
        "count": None,
        "summary": {"column": "bmi"},
        "histogram": {"column": "bmi", "edges": [4242.5, 987654.321]},
        "quantiles": {"column": "bmi", "probs": [0.35]},
    }[kind]
    node = {
        "or": [
            leaf("sex", "in", ["Zq-SECRET-1", "Zq-SECRET-1b"]),
            leaf("bmi", "=", 987654.321),
            {"not": leaf("admission_date", "=", "1999-12-31")},
            leaf("systolic_bp", "between", [4242, 4243]),
        ]
    }
    extra = {"params": params} if params else {}
    compiled = compile_(query(kind=kind, filters=node, group_by=["sex"], **extra), dialect)
    sql_dialect = postgresql.dialect() if dialect == "postgresql" else None
    for select in (compiled.main, compiled.sizes, compiled.selected, compiled.population):
        text = str(select.compile(dialect=sql_dialect)) if sql_dialect else str(select)
        for value in [*SECRET_VALUES, "4242.5", "0.35", *CONSENT.allowed_codes]:
            assert str(value) not in text
        assert TABLE in text


def test_withdrawals_need_a_known_patient_column() -> None:
    with pytest.raises(QueryError) as caught:
        compile_query(query(), TABLE, COLUMNS, obligations(ALLOWED), "duckdb", withdrawn=["tok"])
    assert caught.value.field == "patient_column"
    with pytest.raises(UnknownColumn) as caught:
        compile_query(
            query(), TABLE, COLUMNS, obligations(ALLOWED), "duckdb", patient_column="pid", withdrawn=["t"]
        )
    assert caught.value.field == "patient_column"
    with pytest.raises(UnsupportedStore):
        compile_query(
            query(),
            TABLE,
            COLUMNS,
            obligations(ALLOWED),
            "sqlite",
            patient_column="patient_id",
            withdrawn=["t"],
        )


def test_the_consent_part_is_reused_per_rule_classes_and_withdrawals() -> None:
    def population(withdrawn: list[str], classes: ConsentClasses | None = CLASSES) -> Any:
        return compile_query(
            query(filters={"column": "bmi", "op": ">", "value": 20}), TABLE, COLUMNS, obligations(ALLOWED),
            "duckdb", patient_column="patient_id", withdrawn=withdrawn, consent_classes=classes,
        ).population  # fmt: skip

    same = population(["tok-a"])
    assert population(["tok-a"]) is same, "one select per rule, classes and withdrawals"
    # One more withdrawal, other consent classes: a new predicate that binds them.
    more = population(["tok-a", "tok-b"])
    assert more is not same
    assert "tok-b" in str(more.compile().params) and "tok-b" not in str(same.compile().params)
    assert population(["tok-a"], ConsentClasses((*CLASSES.counts, ("DUO:0000006", 12)))) is not same
    # The main statement still takes the query's own filter value.
    first = compile_query(query(filters={"column": "bmi", "op": ">", "value": 20}), TABLE, COLUMNS,
                          obligations(ALLOWED), "duckdb")  # fmt: skip
    second = compile_query(query(filters={"column": "bmi", "op": ">", "value": 21}), TABLE, COLUMNS,
                           obligations(ALLOWED), "duckdb")  # fmt: skip
    assert first.population is second.population
    assert 20 in first.main.compile().params.values() and 21 in second.main.compile().params.values()


def _bound(select: Any) -> list[Any]:
    """A select's bound values, in order: what the population cache keys on besides the statement."""
    key = select._generate_cache_key()
    return [b.effective_value for b in key.bindparams]


@pytest.mark.parametrize("classes", [CLASSES, None], ids=["listed", "per-row"])
def test_min_cell_count_is_part_of_the_consent_part_and_of_its_population_key(
    classes: ConsentClasses | None,
) -> None:
    """Another min_cell_count can admit other consent classes: it is another shape, and the population
    select binds what it changes (the admitted values, or the threshold of the per-row subquery)."""

    def compiled(min_cell_count: int) -> Any:
        return compile_query(
            query(), TABLE, COLUMNS, obligations(ALLOWED, min_cell_count=min_cell_count), "duckdb",
            consent_classes=classes,
        )  # fmt: skip

    ten, twenty = compiled(10), compiled(20)
    assert ten.shape != twenty.shape and ten.population is not twenty.population
    assert _bound(ten.population) != _bound(twenty.population)
    assert compiled(10).population is ten.population
    if classes is None:
        assert 10 in _bound(ten.population) and 20 in _bound(twenty.population)
    else:
        # DUO:0000042 (700 rows) is admitted under both; "DUO:0000042 DUO:0000046" (15) under 10 only.
        assert ["DUO:0000042", "DUO:0000042 DUO:0000046"] in _bound(ten.population)
        assert ["DUO:0000042"] in _bound(twenty.population)
