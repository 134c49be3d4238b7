"""A filter value and a group value mean the same on DuckDB and PostgreSQL, as each store is published:
timestamps with a time zone whatever the session's zone, integer columns against fractional and huge
numbers, float32 columns against the decimal a researcher writes (also in a histogram's edges, and in a
PostgreSQL table that holds them as double precision), and dates beyond pandas' nanosecond range."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from query_helpers import TABLE, compile_spec, duckdb_holding, reference_mask, write_postgres

from gateway.query import QueryOutcome, execute, store_engine
from pseudonymize.store import CatalogEntry, Store, now_utc

UTC = dt.UTC
CONSENTED = {"consent_duo": "DUO:0000042", "consent_withdrawn": False}


def _consented(columns: dict[str, pa.Array]) -> pa.Table:
    rows = len(next(iter(columns.values())))
    return pa.table(
        {
            "consent_duo": pa.array(["DUO:0000042"] * rows),
            "consent_withdrawn": pa.array([False] * rows),
            **columns,
        }
    )


def _publish_postgres(url: str, table: pa.Table) -> None:
    """`table` published into the PostgreSQL store at `url` as version 1 of dataset `mixed` (`TABLE`), by
    the store's own path: its column types and its CSV copy."""
    entry = CatalogEntry(
        dataset="mixed", version=0, table_name="", published_at=now_utc(), row_count=table.num_rows,
        columns=[{"name": f.name, "type": str(f.type)} for f in table.schema], content_digest="0" * 64,
        spec_digest="0" * 64, key_id="k", key_context="c", duo=["DUO:0000042"], jurisdiction="DE",
    )  # fmt: skip
    with Store(url) as store:
        published = store.publish_batches(table.schema, iter(table.to_batches()), entry)
    assert published.table_name == TABLE


def _with_zone(url: str, zone: str) -> str:
    """`url` (whose options set the search path) with the session TimeZone set to `zone` as well."""
    assert "options=" in url
    return f"{url}%20-ctimezone%3D{zone.replace('/', '%2F')}"


@pytest.fixture(params=["duckdb", "postgresql"])
def publish(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """A function publishing a table on the store under test and giving an engine on it (its session
    zone, on PostgreSQL, set to one far from UTC)."""
    engines: list[sa.Engine] = []

    def on_duckdb(table: pa.Table) -> sa.Engine:
        engines.append(store_engine(duckdb_holding(tmp_path / f"{uuid.uuid4().hex}.duckdb", table)))
        return engines[-1]

    def on_postgres(table: pa.Table) -> sa.Engine:
        url = request.getfixturevalue("pg_url")
        _publish_postgres(url, table)
        engines.append(store_engine(_with_zone(url, "America/New_York")))
        return engines[-1]

    yield on_duckdb if request.param == "duckdb" else on_postgres
    for engine in engines:
        engine.dispose()


def _count(engine: sa.Engine, columns: list[tuple[str, str]], node: Any) -> int:
    outcome = execute(engine, compile_spec(columns, "count", node, {}, engine.dialect.name))
    return int(outcome.frame["n"].iloc[0])


def _columns(table: pa.Table) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in table.schema]


# -- timestamps with a time zone ----------------------------------------------------------------------------

INSTANTS = [dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(hours=h) for h in range(24)]


def test_zoned_timestamps_compare_as_instants_whatever_the_session_zone(publish: Any) -> None:
    table = _consented(
        {
            "ts": pa.array(INSTANTS, pa.timestamp("us", tz="UTC")),
            # Written to PostgreSQL's CSV copy with +01:00 offsets: the instant must survive them.
            "ts_berlin": pa.array(INSTANTS, pa.timestamp("us", tz="Europe/Berlin")),
        }
    )
    engine = publish(table)
    columns = _columns(table)
    for name in ("ts", "ts_berlin"):
        for value, expected in [
            ("2020-01-01T12:00:00+00:00", 12),
            ("2020-01-01T12:00:00+01:00", 13),
            ("2019-12-31T20:00:00-05:00", 23),
        ]:
            node = {"column": name, "op": ">=", "value": value}
            assert _count(engine, columns, node) == expected, (name, value)
        node = {"column": name, "op": "=", "value": "2020-01-01T06:00:00-05:00"}
        assert _count(engine, columns, node) == 1, name
    grouped = compile_spec(columns, "count", None, {"group_by": ["ts_berlin"]}, engine.dialect.name)
    outcome = execute(engine, grouped)
    assert list(outcome.frame["ts_berlin"]) == [pd.Timestamp(t) for t in INSTANTS]


def test_zoned_timestamps_stored_without_a_zone_compare_in_utc(pg_url: str) -> None:
    """A PostgreSQL table holding a zoned column as `timestamp without time zone` (its UTC wall time) is
    compared in UTC, not in the server's or the connection's zone."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            target = sa.Table(
                TABLE, sa.MetaData(), sa.Column("consent_duo", sa.Text()),
                sa.Column("consent_withdrawn", sa.Boolean()), sa.Column("ts", sa.DateTime()),
            )  # fmt: skip
            target.create(conn)
            conn.execute(target.insert(), [{**CONSENTED, "ts": t.replace(tzinfo=None)} for t in INSTANTS])
    finally:
        engine.dispose()
    columns = [("consent_duo", "string"), ("consent_withdrawn", "bool"), ("ts", "timestamp[us, tz=UTC]")]
    node = {"column": "ts", "op": ">=", "value": "2020-01-01T12:00:00+00:00"}
    for zone in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"):
        query = store_engine(_with_zone(pg_url, zone))
        try:
            assert _count(query, columns, node) == 12, zone
            grouped = execute(query, compile_spec(columns, "count", None, {"group_by": ["ts"]}, "postgresql"))
            assert list(grouped.frame["ts"]) == [pd.Timestamp(t) for t in INSTANTS], zone
        finally:
            query.dispose()


# -- integer columns against fractional and huge numbers ----------------------------------------------------

AGES = [i % 6 if i % 10 != 9 else None for i in range(60)]
INT_FILTERS: list[tuple[str, Any]] = [
    ("=", 1.5), ("!=", 1.5), (">", 1.5), (">=", 1.5), ("<", 1.5), ("<=", 2.5), ("=", 2.4999999),
    ("in", [1.5, 2.5]), ("in", [1.5, 3]), ("between", [1.5, 2.5]), ("between", [-0.5, 0.5]),
    ("=", 2.0), ("!=", 2.0), (">", 1e300), ("<", 1e300), ("<", -1e300), (">=", -1e300), ("=", 1e300),
    (">", 9007199254740991), ("<", 9.3e18), (">", -9.3e18), ("=", 0), ("<=", 3),
]  # fmt: skip


def test_integer_columns_compare_with_any_number_exactly(publish: Any) -> None:
    table = _consented({"age": pa.array(AGES, pa.int64()), "age32": pa.array(AGES, pa.int32())})
    engine = publish(table)
    columns = _columns(table)
    frame = table.to_pandas()
    for name in ("age", "age32"):
        for op, value in INT_FILTERS:
            node = {"column": name, "op": op, "value": value}
            expected = int(reference_mask(frame, node).sum())
            assert _count(engine, columns, node) == expected, (name, op, value)
            negated = {"not": node}
            expected = int(reference_mask(frame, negated).sum())
            assert _count(engine, columns, negated) == expected, ("not", name, op, value)


def test_a_whole_float_on_an_integer_column_is_bound_as_an_integer() -> None:
    columns = [("consent_duo", "string"), ("consent_withdrawn", "bool"), ("age", "int64")]
    for value, bound in [(2.0, 2), (-0.0, 0), (1e18, 10**18), (1.5, 1.5), (1e300, 1e300)]:
        compiled = compile_spec(columns, "count", {"column": "age", "op": "=", "value": value}, {})
        assert list(compiled.values.values()) == [bound]
        assert type(compiled.values["filter_value_0"]) is type(bound), value


# -- float32 columns against decimals ---------------------------------------------------------------------


X32 = [0.1, 0.6, 1.3] * 10
X32_COLUMNS = [("consent_duo", "string"), ("consent_withdrawn", "bool"), ("x", "float"), ("event", "bool")]


@pytest.fixture(params=["duckdb", "postgresql", "postgresql, as double precision"])
def float32_x(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.Engine]:
    """An engine on a table whose float32 column `x` holds X32 (with an `event` column, all true): on
    DuckDB, on PostgreSQL as the store publishes it, and on PostgreSQL as a store published it before it
    kept float32 columns as REAL: as double precision, each value the double its CSV text (0.6) parses to,
    not the float32 ingested (0.6000000238…). All three must answer alike."""
    events = pa.array([True] * len(X32))
    if request.param == "duckdb":
        table = _consented({"x": pa.array(X32, pa.float32()), "event": events})
        engine = store_engine(duckdb_holding(tmp_path / "x.duckdb", table))
    else:
        url = request.getfixturevalue("pg_url")
        if request.param == "postgresql":
            _publish_postgres(url, _consented({"x": pa.array(X32, pa.float32()), "event": events}))
        else:
            write_postgres(url, _consented({"x": pa.array(X32, pa.float64()), "event": events}))
        engine = store_engine(url)
    yield engine
    engine.dispose()


def test_float32_columns_compare_with_the_float32_nearest_the_value(float32_x: sa.Engine) -> None:
    for op, value, expected in [
        ("=", 0.6, 10),
        ("!=", 0.6, 20),
        ("<=", 0.6, 20),
        ("<", 0.6, 10),
        (">", 0.6, 10),
        ("in", [0.1, 1.3], 20),
        ("between", [0.1, 0.6], 20),
        ("=", 0.6000000238418579, 10),  # the float32 itself, written out
        ("=", 0.6000001, 0),
        ("<", 1e300, 30),
        (">", -1e300, 30),
        ("=", 1e300, 0),
    ]:
        node = {"column": "x", "op": op, "value": value}
        assert _count(float32_x, X32_COLUMNS, node) == expected, (op, value)
        assert _count(float32_x, X32_COLUMNS, {"not": node}) == 30 - expected, ("not", op, value)


@pytest.mark.parametrize(
    "edges",
    [[0.1, 0.6, 1.3], [0.6, 1.3], [0.5, 0.6, 0.7], [0.6000001, 1.3], [0.6, 1e300], [0.1, 0.6000000238418579]],
)
def test_float32_histogram_and_kaplan_meier_bins_hold_the_rows_their_filters_select(
    float32_x: sa.Engine, edges: list[float]
) -> None:
    """A bin (lower, upper] on a float32 column counts the rows `x > lower and x <= upper` selects, edges
    compared as filter values are; the answer gives the edges as written."""
    dialect = float32_x.dialect.name
    bounds: list[float | None] = [None, *edges, None]
    expected = []
    for lower, upper in itertools.pairwise(bounds):
        leaves = [
            {"column": "x", "op": op, "value": v} for op, v in ((">", lower), ("<=", upper)) if v is not None
        ]
        expected.append(_count(float32_x, X32_COLUMNS, {"and": leaves}))
    histogram = compile_spec(
        X32_COLUMNS, "histogram", None, {"params": {"column": "x", "edges": edges}}, dialect
    )
    assert histogram.bins == tuple(itertools.pairwise(bounds))
    assert _by_bin(execute(float32_x, histogram), len(edges)) == expected
    params = {"time": "x", "event": "event", "edges": edges}
    survival = execute(
        float32_x, compile_spec(X32_COLUMNS, "kaplan_meier", None, {"params": params}, dialect)
    )
    assert _by_bin(survival, len(edges)) == expected


def test_float32_statistics_read_the_float32_values(float32_x: sa.Engine) -> None:
    """A summary of a float32 column sums the float32 values, also where a table holds their decimals as
    double precision."""
    dialect = float32_x.dialect.name
    summary = execute(
        float32_x, compile_spec(X32_COLUMNS, "summary", None, {"params": {"column": "x"}}, dialect)
    )
    widened = [float(v) for v in pa.array(X32, pa.float32()).cast(pa.float64()).to_pylist()]
    assert float(summary.frame["sum"].iloc[0]) == pytest.approx(sum(widened), rel=1e-13, abs=0)
    assert float(summary.frame["sum_sq"].iloc[0]) == pytest.approx(
        sum(v * v for v in widened), rel=1e-13, abs=0
    )


def _by_bin(outcome: QueryOutcome, edges: int) -> list[int]:
    """The rows of each bin of a histogram or Kaplan–Meier answer, 0 for a bin no row fell in."""
    counts = dict(zip(outcome.frame["bin"], outcome.frame["n"], strict=True))
    return [int(counts.get(i, 0)) for i in range(edges + 1)]


# -- dates beyond pandas' nanosecond range -----------------------------------------------------------------

FAR_DATES = [dt.date(9999, 12, 31), dt.date(1, 1, 1), dt.date(1600, 3, 1), dt.date(2020, 1, 1), None]


def test_groups_of_far_dates_and_timestamps_are_answered(publish: Any) -> None:
    days = [FAR_DATES[i % 5] for i in range(50)]
    stamps = [dt.datetime.combine(d, dt.time(6, 30)) if d is not None else None for d in days]
    zoned = [s.replace(year=min(s.year, 9000), tzinfo=UTC) if s is not None else None for s in stamps]
    table = _consented(
        {
            "d": pa.array(days, pa.date32()),
            "ts": pa.array(stamps, pa.timestamp("us")),
            "tz": pa.array(zoned, pa.timestamp("us", tz="UTC")),
            "bmi": pa.array([20.0 + i % 7 for i in range(50)]),
        }
    )
    engine = publish(table)
    columns = _columns(table)
    dialect = engine.dialect.name
    for name, values in (("d", days), ("ts", stamps), ("tz", zoned)):
        count = execute(engine, compile_spec(columns, "count", None, {"group_by": [name]}, dialect))
        expected = sorted({v for v in values if v is not None})
        assert _groups(count, name) == [*(pd.Timestamp(v) for v in expected), None], name
        assert list(count.frame["n"]) == [10] * 5
        extra = {"group_by": [name], "params": {"column": "bmi"}}
        summary = execute(engine, compile_spec(columns, "summary", None, extra, dialect))
        assert _groups(summary, name) == [*(pd.Timestamp(v) for v in expected), None], name
    node = {"column": "d", "op": ">", "value": "2200-01-01"}
    assert _count(engine, columns, node) == 10


def _groups(outcome: QueryOutcome, name: str) -> list[Any]:
    return [None if pd.isna(v) else v for v in outcome.frame[name]]
