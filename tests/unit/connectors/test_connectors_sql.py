"""SqlConnector against SQLite, DuckDB and the real PostgreSQL: types, streaming and typed errors."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Generator
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa

from connectors import (
    Connector,
    EmptySource,
    EncodingError,
    InvalidOption,
    MissingColumn,
    SourceNotFound,
    SqlConnector,
    TypeParseError,
)

Drain = Callable[[Connector, int], pa.Table]
NamedCheck = Callable[..., None]
SECRET = "MRN-SECRET-4711"


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    execute(
        url,
        "create table patients (id integer primary key, mrn text not null, born date, admitted datetime,"
        " bmi real, hba1c numeric(4, 1), smoker boolean, photo blob, note)",
        "insert into patients values"
        " (3, 'P3', '1970-03-01', '2020-01-02 10:30:00', 31.5, 6.4, 1, x'00ff', 7)",
        "insert into patients values (1, 'P1', null, null, null, null, 0, null, 'free text')",
        "insert into patients values (2, 'P2', '1980-12-31', null, 22.0, 5.5, null, null, null)",
    )
    return url


def test_sqlite_types_and_primary_key_order(sqlite_url: str, drain: Drain) -> None:
    table = drain(SqlConnector(sqlite_url, "patients"), 2)
    assert table.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("mrn", pa.string()),
            ("born", pa.date32()),
            ("admitted", pa.timestamp("us")),
            ("bmi", pa.float64()),
            ("hba1c", pa.decimal128(4, 1)),
            ("smoker", pa.bool_()),
            ("photo", pa.binary()),
            ("note", pa.string()),  # untyped SQLite column: its text
        ]
    )
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.slice(2).to_pylist() == [
        {
            "id": 3,
            "mrn": "P3",
            "born": dt.date(1970, 3, 1),
            "admitted": dt.datetime(2020, 1, 2, 10, 30),
            "bmi": 31.5,
            "hba1c": Decimal("6.4"),
            "smoker": True,
            "photo": b"\x00\xff",
            "note": "7",
        }
    ]


def test_columns_select_and_order(sqlite_url: str, drain: Drain) -> None:
    connector = SqlConnector(sqlite_url, "patients", columns=["bmi", "mrn"])
    assert connector.schema().names == ["bmi", "mrn"]
    assert drain(connector, 10).to_pylist() == [
        {"bmi": None, "mrn": "P1"},
        {"bmi": 22.0, "mrn": "P2"},
        {"bmi": 31.5, "mrn": "P3"},
    ]


def test_streams_bounded_batches(tmp_path: Path, drain: Drain) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    execute(
        url,
        "create table labs (id integer primary key, value real)",
        "insert into labs with recursive n(i) as (select 1 union all select i + 1 from n where i < 25000)"
        " select i, i * 0.5 from n",
    )
    connector = SqlConnector(url, "labs")
    batches = list(connector.batches(1_000))
    assert len(batches) == 25
    assert all(batch.num_rows == 1_000 for batch in batches)
    assert drain(connector, 4_096).num_rows == 25_000


def test_value_that_does_not_convert(tmp_path: Path, assert_named: NamedCheck) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    execute(
        url,
        "create table labs (id integer primary key, age integer)",
        "insert into labs values (1, 30), (2, 31), (3, 'MRN-SECRET-4711')",
    )
    connector = SqlConnector(url, "labs")
    with pytest.raises(TypeParseError) as caught:
        list(connector.batches(2))
    assert_named(caught.value, source=connector.source, row=3, column="age", secret=SECRET)
    assert "int64" in str(caught.value)


def test_a_value_the_driver_cannot_read_as_its_declared_type(
    tmp_path: Path, assert_named: NamedCheck
) -> None:
    # SQLite stores any text in a DATE column; reading it as a date fails in the driver, whose message
    # quotes the value.
    url = f"sqlite:///{tmp_path / 'site.db'}"
    execute(
        url,
        "create table visits (id integer primary key, seen date)",
        "insert into visits values (1, '2024-01-02'), (2, '2024-01-03'), (3, 'MRN-SECRET-4711')",
    )
    connector = SqlConnector(url, "visits")
    with pytest.raises(TypeParseError) as caught:
        list(connector.batches(2))
    # The failed batch is read again to find the column and the row.
    assert_named(caught.value, source=connector.source, row=3, column="seen", secret=SECRET)
    assert "date32" in str(caught.value)


def test_table_that_does_not_exist(sqlite_url: str, assert_named: NamedCheck) -> None:
    connector = SqlConnector(sqlite_url, "patient")
    with pytest.raises(SourceNotFound) as caught:
        connector.schema()
    assert_named(caught.value, source=f"{sqlite_url} table patient")
    assert "table does not exist" in str(caught.value)


def test_missing_column(sqlite_url: str, assert_named: NamedCheck) -> None:
    connector = SqlConnector(sqlite_url, "patients", columns=["mrn", "postcode"])
    with pytest.raises(MissingColumn) as caught:
        list(connector.batches())
    assert_named(caught.value, source=connector.source, column="postcode")


def test_missing_database_file_is_not_created(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = tmp_path / "absent.db"
    connector = SqlConnector(f"sqlite:///{path}", "patients")
    with pytest.raises(SourceNotFound) as caught:
        connector.schema()
    assert_named(caught.value, source=connector.source)
    assert not path.exists()


def test_unreachable_database_names_the_url_without_password(assert_named: NamedCheck) -> None:
    # port 1 on the loopback refuses at once
    connector = SqlConnector("postgresql+psycopg://steward:s3cret-pw@127.0.0.1:1/clinic", "patients")
    with pytest.raises(SourceNotFound) as caught:
        connector.schema()
    assert_named(
        caught.value,
        source="postgresql+psycopg://steward:***@127.0.0.1:1/clinic table patients",
        secret="s3cret-pw",
    )
    assert "cannot connect" in str(caught.value)


def test_unparsable_url_is_not_repeated() -> None:
    with pytest.raises(InvalidOption) as caught:
        SqlConnector("not a url s3cret-pw", "patients")
    assert "s3cret-pw" not in str(caught.value)


def test_unknown_dialect() -> None:
    with pytest.raises(InvalidOption) as caught:
        SqlConnector("nosuchdb://u:s3cret-pw@host/db", "patients").schema()
    assert "s3cret-pw" not in str(caught.value)


@pytest.fixture
def duckdb_url(tmp_path: Path) -> str:
    path = tmp_path / "site.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "create table patients as select i as id, 'P' || i as mrn, date '1970-01-01' + i::int as born,"
            " (i % 7)::decimal(4, 1) as score from range(2500) t(i)"
        )
    return f"duckdb:///{path}"


def test_duckdb_types_columns_and_streaming(duckdb_url: str, drain: Drain) -> None:
    connector = SqlConnector(duckdb_url, "patients", columns=["mrn", "born", "score"])
    assert connector.schema() == pa.schema(
        [("mrn", pa.string()), ("born", pa.date32()), ("score", pa.decimal128(4, 1))]
    )
    batches = list(connector.batches(1_000))
    assert [batch.num_rows for batch in batches] == [1_000, 1_000, 500]
    table = drain(connector, 700)
    assert table.num_rows == 2_500
    assert sorted(table.column("mrn").to_pylist())[:2] == ["P0", "P1"]


def test_duckdb_table_that_does_not_exist(duckdb_url: str, assert_named: NamedCheck) -> None:
    connector = SqlConnector(duckdb_url, "visits")
    with pytest.raises(SourceNotFound) as caught:
        connector.schema()
    assert_named(caught.value, source=f"{duckdb_url} table visits")


def test_duckdb_missing_column(duckdb_url: str, assert_named: NamedCheck) -> None:
    connector = SqlConnector(duckdb_url, "patients", columns=["sex"])
    with pytest.raises(MissingColumn) as caught:
        connector.schema()
    assert_named(caught.value, source=connector.source, column="sex")


def test_duckdb_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.duckdb"
    with pytest.raises(SourceNotFound):
        SqlConnector(f"duckdb:///{path}", "patients").schema()
    assert not path.exists()


@pytest.mark.postgres
def test_postgres_types_and_order(pg_url: str, drain: Drain) -> None:
    execute(
        pg_url,
        "create table patients (id bigserial primary key, mrn text, born date, admitted timestamptz,"
        " hba1c numeric(4, 1), weight numeric, stay interval, token uuid, extra jsonb, smoker boolean,"
        " visits smallint, codes text[])",
        "insert into patients (mrn, born, admitted, hba1c, weight, stay, token, extra, smoker, visits, codes)"
        " values ('P1', '1970-03-01', '2020-01-02 10:30:00+01', 6.4, 81.25, '2 days',"
        " '00000000-0000-0000-0000-000000000001', '{\"k\": 1}', true, 3, '{E11,I10}'),"
        " (null, null, null, null, null, null, null, null, null, null, null)",
    )
    connector = SqlConnector(pg_url, "patients")
    table = drain(connector, 1)
    assert table.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("mrn", pa.string()),
            ("born", pa.date32()),
            ("admitted", pa.timestamp("us", tz="UTC")),
            ("hba1c", pa.decimal128(4, 1)),
            ("weight", pa.float64()),
            ("stay", pa.duration("us")),
            ("token", pa.string()),
            ("extra", pa.string()),
            ("smoker", pa.bool_()),
            ("visits", pa.int16()),
            ("codes", pa.string()),
        ]
    )
    first = table.to_pylist()[0]
    assert first["admitted"] == dt.datetime(2020, 1, 2, 9, 30, tzinfo=dt.UTC)
    assert first["hba1c"] == Decimal("6.4")
    assert first["stay"] == dt.timedelta(days=2)
    assert first["token"] == "00000000-0000-0000-0000-000000000001"
    assert first["extra"] == '{"k": 1}'
    assert table.slice(1).to_pylist()[0]["mrn"] is None
    assert connector.source.startswith("postgresql+psycopg://")


@pytest.mark.postgres
def test_postgres_streams_bounded_batches_with_explicit_schema(pg_url: str, drain: Drain) -> None:
    schema = re.search(r"search_path%3D(\w+)", pg_url)
    assert schema is not None
    execute(
        pg_url,
        "create table labs as select i as id, i * 0.5 as value from generate_series(1, 12000) i",
    )
    connector = SqlConnector(pg_url, "labs", schema=schema[1], columns=["id"])
    sizes = [batch.num_rows for batch in connector.batches(5_000)]
    assert sizes == [5_000, 5_000, 2_000]
    assert drain(connector, 999).num_rows == 12_000


@pytest.mark.postgres
def test_postgres_table_that_does_not_exist(pg_url: str) -> None:
    connector = SqlConnector(pg_url, "nowhere")
    with pytest.raises(SourceNotFound) as caught:
        connector.schema()
    assert str(caught.value).startswith(connector.source)
    assert "nowhere" in str(caught.value)


@pytest.mark.postgres
def test_postgres_missing_column(pg_url: str, assert_named: NamedCheck) -> None:
    execute(pg_url, "create table patients (mrn text)")
    connector = SqlConnector(pg_url, "patients", columns=["mrn", "postcode"])
    with pytest.raises(MissingColumn) as caught:
        connector.schema()
    assert_named(caught.value, source=connector.source, column="postcode")


@pytest.mark.postgres
def test_postgres_reads_through_a_server_side_cursor(pg_url: str) -> None:
    execute(pg_url, "create table labs as select i as id from generate_series(1, 3000) i")
    batches = SqlConnector(pg_url, "labs").batches(1_000)
    assert isinstance(batches, Generator)
    observer = sa.create_engine(pg_url)
    try:
        first = next(batches)
        with observer.connect() as conn:
            fetching = conn.execute(
                sa.text(
                    "select count(*) from pg_stat_activity"
                    " where pid <> pg_backend_pid() and query ilike 'fetch forward % from %'"
                )
            ).scalar_one()
        # the rows not yet read stay in the server; the client holds one batch
        assert fetching == 1
        assert first.num_rows + sum(batch.num_rows for batch in batches) == 3_000
    finally:
        batches.close()  # an open cursor would block dropping the test schema
        observer.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "duckdb"])
def test_table_without_rows(tmp_path: Path, kind: str, assert_named: NamedCheck) -> None:
    path = tmp_path / f"site.{kind}"
    if kind == "duckdb":
        with duckdb.connect(str(path)) as conn:
            conn.execute("create table patients (mrn varchar)")
    else:
        execute(f"sqlite:///{path}", "create table patients (mrn text)")
    connector = SqlConnector(f"{kind}:///{path}", "patients")
    assert connector.schema().names == ["mrn"]
    with pytest.raises(EmptySource) as caught:
        list(connector.batches())
    assert_named(caught.value, source=connector.source)


def test_secrets_in_a_database_url_are_never_shown(tmp_path: Path) -> None:
    from connectors.sql import shown_url

    url = f"sqlite:///{tmp_path / 'src.db'}?password=S3cretDbPass&sslkey=k3y-file&mode=ro"
    shown = shown_url(url)
    assert "S3cretDbPass" not in shown and "k3y-file" not in shown and "mode=ro" in shown
    assert "hunter2" not in shown_url("postgresql://user:hunter2@db.example/site")
    assert "S3cretDbPass" not in SqlConnector(url, table="pts").source


@pytest.mark.parametrize("stored", ["'false'", "'no'", "7"])
def test_sqlite_boolean_holding_no_boolean(tmp_path: Path, stored: str, assert_named: NamedCheck) -> None:
    # SQLite keeps any value in a BOOLEAN column; only 0 and 1 are booleans (the text 'false' is no False).
    url = f"sqlite:///{tmp_path / 'site.db'}"
    execute(
        url,
        "create table patients (id integer primary key, smoker boolean)",
        f"insert into patients values (1, 1), (2, 0), (3, null), (4, {stored})",
    )
    connector = SqlConnector(url, "patients")
    with pytest.raises(TypeParseError) as caught:
        list(connector.batches(10))
    assert_named(caught.value, source=connector.source, row=4, column="smoker")


def test_text_in_a_numeric_column(tmp_path: Path, assert_named: NamedCheck) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    execute(
        url,
        "create table labs (id integer primary key, hba1c numeric(4, 1))",
        "insert into labs values (1, 6.4), (2, 5), (3, 'MRN-SECRET-4711')",
    )
    connector = SqlConnector(url, "labs")
    with pytest.raises(TypeParseError) as caught:
        list(connector.batches(10))
    assert_named(caught.value, source=connector.source, row=3, column="hba1c", secret=SECRET)


def test_a_file_that_is_no_database(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = tmp_path / "site.db"
    path.write_bytes(b"mrn,age\nP1,34\nP2,71\n")
    connector = SqlConnector(f"sqlite:///{path}", "patients")
    with pytest.raises(SourceNotFound) as caught:
        connector.schema()
    assert_named(caught.value, source=connector.source)
    assert "not a database" in str(caught.value)


@pytest.mark.parametrize("kind", ["sqlite", "duckdb"])
def test_nul_character_in_a_text_value(tmp_path: Path, kind: str, assert_named: NamedCheck) -> None:
    path = tmp_path / f"site.{kind}"
    rows = "(1, 'P1'), (2, 'P2'), (3, 'MRN-' || chr(0) || 'SECRET-4711')"
    if kind == "duckdb":
        with duckdb.connect(str(path)) as conn:
            conn.execute(f"create table patients as select * from (values {rows}) t(id, mrn)")
    else:
        execute(f"sqlite:///{path}", "create table patients (id integer primary key, mrn text)")
        execute(f"sqlite:///{path}", f"insert into patients values {rows.replace('chr(0)', 'char(0)')}")
    connector = SqlConnector(f"{kind}:///{path}", "patients")
    with pytest.raises(EncodingError) as caught:
        list(connector.batches(2))
    assert_named(caught.value, source=connector.source, row=3, column="mrn", secret=SECRET)


def test_duckdb_reader_stopped_early_closes_quietly(
    duckdb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    batches = SqlConnector(duckdb_url, "patients").batches(100)
    assert next(batches).num_rows == 100
    with caplog.at_level(logging.ERROR):
        batches.close()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    # The file is free again: a reader that left its result open would hold it.
    assert SqlConnector(duckdb_url, "patients").schema().names == ["id", "mrn", "born", "score"]


def test_a_password_holding_an_at_sign_is_refused_unshown() -> None:
    with pytest.raises(InvalidOption) as caught:
        SqlConnector("postgresql+psycopg://steward:S3cr@tPa55@127.0.0.1:1/clinic", "patients")
    assert "%40" in str(caught.value)
    assert "tPa55" not in str(caught.value) and "S3cr" not in str(caught.value)


def test_a_driver_message_never_shows_the_password(tmp_path: Path) -> None:
    connector = SqlConnector("postgresql+psycopg://steward:s3cret-pw@127.0.0.1:1/clinic", "patients")
    # A driver line that would quote the connection string, password and all.
    line = connector._driver_message(ValueError("invalid dsn: password=s3cret-pw host=127.0.0.1"))
    assert "s3cret-pw" not in line and "password=***" in line


@pytest.mark.postgres
def test_postgres_date_no_python_date_holds(pg_url: str, assert_named: NamedCheck) -> None:
    execute(
        pg_url,
        "create table visits (id integer primary key, seen date, note text)",
        "insert into visits select i, date '2020-01-01' + i, 'n' from generate_series(1, 2500) i",
        "update visits set seen = 'infinity' where id = 2222",
    )
    connector = SqlConnector(pg_url, "visits")
    with pytest.raises(TypeParseError) as caught:
        list(connector.batches(1_000))
    assert_named(caught.value, source=connector.source, row=2222, column="seen")
