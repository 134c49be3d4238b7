"""open_source: the connector chosen for each kind of source, and errors for what it cannot choose."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from connectors import (
    CsvConnector,
    FhirNdjsonConnector,
    InvalidOption,
    ParquetConnector,
    SourceNotFound,
    SqlConnector,
    open_source,
)
from connectors.sql import shown_url


def test_csv_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "a.TSV").write_text("x\ty\n1\t2\n")
    csv = open_source(str(tmp_path / "a.csv"), columns={"x": "int32"})
    assert isinstance(csv, CsvConnector)
    assert csv.schema().field("x").type == pa.int32()
    tsv = open_source(str(tmp_path / "a.TSV"))
    assert isinstance(tsv, CsvConnector)
    assert tsv.schema().names == ["x", "y"]


def test_parquet(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1], "y": ["a"]}), tmp_path / "a.parquet")
    connector = open_source(str(tmp_path / "a.parquet"), columns=["y"])
    assert isinstance(connector, ParquetConnector)
    assert connector.schema().names == ["y"]


def test_ndjson_file_named_after_its_type(tmp_path: Path) -> None:
    (tmp_path / "Observation.000.ndjson").write_text('{"resourceType": "Observation", "id": "o1"}\n')
    connector = open_source(str(tmp_path / "Observation.000.ndjson"))
    assert isinstance(connector, FhirNdjsonConnector)
    assert connector.resource_type == "Observation"


def test_ndjson_folder_needs_a_resource_type(tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p1"}\n')
    connector = open_source(str(tmp_path), resource_type="Patient")
    assert isinstance(connector, FhirNdjsonConnector)
    with pytest.raises(InvalidOption) as caught:
        open_source(str(tmp_path))
    assert "resource_type" in str(caught.value)


def test_database_url_needs_a_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("create table patients (mrn text)"))
    engine.dispose()
    connector = open_source(url, table="patients")
    assert isinstance(connector, SqlConnector)
    assert connector.schema().names == ["mrn"]
    with pytest.raises(InvalidOption) as caught:
        open_source("postgresql+psycopg://u:s3cret-pw@db/clinic")
    assert "table" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["postgresql://u:s3cret-pw@[::1/clinic", "postgresql://u:s3cret-pw@db:port/clinic"]
)
def test_a_malformed_database_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        open_source(url, table="patients")
    assert "not a valid SQLAlchemy database URL" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_unknown_option_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    with pytest.raises(InvalidOption) as caught:
        open_source(str(tmp_path / "a.csv"), table="patients")
    assert "'table'" in str(caught.value)


def test_unknown_kind_of_source(tmp_path: Path) -> None:
    (tmp_path / "a.xlsx").write_bytes(b"PK")
    with pytest.raises(InvalidOption):
        open_source(str(tmp_path / "a.xlsx"))
    with pytest.raises(SourceNotFound):
        open_source(str(tmp_path / "absent"))


@pytest.mark.parametrize(
    "source",
    [
        " postgresql+psycopg:/postgres:S3cretPa55@127.0.0.1:5432/test",
        "postgresql_psycopg://postgres:S3cretPa55@127.0.0.1:5432/test",
        "postgres:S3cretPa55@127.0.0.1:5432/test",
        "postgresql+psycopg:/postgres:S3cretPa55@127.0.0.1:5432/test.csv",
    ],
)
def test_a_database_url_typed_wrong_is_shown_without_its_password(source: str) -> None:
    # Typed wrong, a URL reads as a file name; whatever the message, the password is not in it.
    with pytest.raises((SourceNotFound, InvalidOption)) as caught:
        open_source(source, table="patients").schema()
    assert "S3cretPa55" not in str(caught.value)
    assert ":***@127.0.0.1:5432" in str(caught.value)


def test_a_password_with_an_at_sign_is_refused_without_showing_it() -> None:
    for options in ({"table": "patients"}, {}):
        with pytest.raises(InvalidOption) as caught:
            open_source("postgresql+psycopg://postgres:S3cr@tPa55@127.0.0.1:5432/test", **options)
        assert "S3cr" not in str(caught.value) and "tPa55" not in str(caught.value)
        assert "%40" in str(caught.value)
    # Written %40, it is read and never shown.
    connector = open_source("postgresql+psycopg://postgres:S3cr%40tPa55@127.0.0.1:1/test", table="patients")
    assert "S3cr" not in connector.source and "tPa55" not in connector.source


@pytest.mark.parametrize(
    "source",
    [
        "host=db.example user=steward password=hunter2 dbname=registry",
        "host=db.example password='hunter2' dbname=registry",
        "DRIVER={ODBC Driver 18};SERVER=db.example;UID=steward;PWD=hunter2",
    ],
)
def test_a_connection_string_given_as_a_source_is_shown_without_its_password(source: str) -> None:
    # Not a URL: read as a file name that does not exist, and named without the password.
    with pytest.raises((SourceNotFound, InvalidOption)) as caught:
        open_source(source, table="patients").schema()
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_a_connection_string_inside_a_url_is_shown_without_its_password() -> None:
    odbc = "DRIVER={ODBC Driver 18};SERVER=db.example;UID=steward;PWD=hunter2"
    url = sa.URL.create("mssql+pyodbc", query={"odbc_connect": odbc})
    shown = shown_url(url)
    assert "hunter2" not in shown and "steward" in shown
    assert "hunter2" not in shown_url(url.render_as_string(hide_password=False))
