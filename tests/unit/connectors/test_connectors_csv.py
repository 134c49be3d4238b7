"""CsvConnector: typed streaming reads, and errors that name line, row and column without the value."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from connectors import (
    Connector,
    CsvConnector,
    EmptySource,
    EncodingError,
    FormatError,
    InvalidOption,
    MalformedRecord,
    MissingColumn,
    SourceNotFound,
    TypeParseError,
)

Drain = Callable[[Connector, int], pa.Table]
NamedCheck = Callable[..., None]
SECRET = "MRN-SECRET-4711"


def write(tmp_path: Path, data: bytes, name: str = "cohort.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def rows(count: int, start: int = 0) -> bytes:
    return b"".join(
        f"P{i:07d},{20 + i % 70},19{50 + i % 50}-0{1 + i % 9}-1{i % 9}\n".encode()
        for i in range(start, count)
    )


HEADER = b"mrn,age,birth_date\n"
TYPES = {"age": "int64", "birth_date": "date32"}


def test_declared_types_are_applied_and_others_inferred(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\nP2,,1980-01-31\n")
    table = drain(CsvConnector(path, columns={"age": "float64", "birth_date": "date32"}), 10)
    assert table.schema == pa.schema(
        [("mrn", pa.string()), ("age", pa.float64()), ("birth_date", pa.date32())]
    )
    assert table.to_pylist() == [
        {"mrn": "P1", "age": 34.0, "birth_date": dt.date(1990, 5, 1)},
        {"mrn": "P2", "age": None, "birth_date": dt.date(1980, 1, 31)},
    ]


def test_inferred_types_and_empty_columns_read_as_text(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, b"mrn,age,note\nP1,34,\nP2,35,\n")
    table = drain(CsvConnector(path), 10)
    assert table.schema == pa.schema([("mrn", pa.string()), ("age", pa.int64()), ("note", pa.string())])
    assert table.column("age").to_pylist() == [34, 35]


def test_other_delimiters_line_endings_and_blank_lines(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, b'\r\nmrn;age\r\n\r\nP1;34\r\n"P;2";35\r\n', name="cohort.tsv")
    table = drain(CsvConnector(path, delimiter=";", columns={"age": "int32"}), 10)
    assert table.to_pylist() == [{"mrn": "P1", "age": 34}, {"mrn": "P;2", "age": 35}]


def test_non_ascii_text_survives(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, "name,city\nJürgen Müller,Zürich\n".encode())
    assert drain(CsvConnector(path), 10).to_pylist() == [{"name": "Jürgen Müller", "city": "Zürich"}]


def test_streams_bounded_batches_without_loading_the_file(tmp_path: Path, drain: Drain) -> None:
    count = 1_000_000
    path = write(tmp_path, HEADER + b"P0000001,34,1990-05-01\n" * count)
    size = path.stat().st_size
    connector = CsvConnector(path, columns=TYPES)
    connector.schema()
    batch_rows = 5_000
    seen = 0
    batches = 0
    peak = 0
    for batch in connector.batches(batch_rows):
        assert batch.num_rows <= batch_rows
        seen += batch.num_rows
        batches += 1
        peak = max(peak, pa.total_allocated_bytes())
        del batch
    assert seen == count
    assert batches >= count // batch_rows
    # A bounded stream holds a few blocks (about 4 MiB here), never the whole 23 MB file.
    assert peak < size / 3


def test_malformed_row_names_line_and_row(tmp_path: Path, assert_named: NamedCheck) -> None:
    # a blank line makes the physical line differ from the row number
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\n\n" + SECRET.encode() + b",35\n")
    with pytest.raises(MalformedRecord) as caught:
        list(CsvConnector(path).batches())
    assert_named(caught.value, source=str(path), line=4, row=2, secret=SECRET)
    assert "expected 3 fields, found 2" in str(caught.value)


def test_malformed_row_far_into_the_file(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + rows(60_000) + b"P9,1,2000-01-01,extra\n")
    with pytest.raises(MalformedRecord) as caught:
        list(CsvConnector(path, columns=TYPES).batches(1_000))
    assert_named(caught.value, source=str(path), line=60_002, row=60_001)


def test_declared_type_that_does_not_parse(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\nP2," + SECRET.encode() + b",1980-01-31\n")
    with pytest.raises(TypeParseError) as caught:
        CsvConnector(path, columns=TYPES).schema()
    assert_named(caught.value, source=str(path), line=3, row=2, column="age", secret=SECRET)
    assert "int64" in str(caught.value)


def test_invalid_date_names_its_column(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\nP2,35,1990-13-01\n")
    with pytest.raises(TypeParseError) as caught:
        list(CsvConnector(path, columns=TYPES).batches())
    assert_named(caught.value, source=str(path), line=3, row=2, column="birth_date", secret="1990-13-01")


def test_bad_value_in_a_later_block_is_found_by_rescanning(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(
        tmp_path, HEADER + rows(80_000) + b"P9,x" + SECRET.encode() + b",2000-01-01\n" + rows(81_000, 80_000)
    )
    with pytest.raises(TypeParseError) as caught:
        list(CsvConnector(path, columns=TYPES).batches(2_000))
    assert_named(caught.value, source=str(path), line=80_002, row=80_001, column="age", secret=SECRET)


def test_inferred_type_broken_past_the_first_rows(tmp_path: Path, assert_named: NamedCheck) -> None:
    # the first block (1 MiB) shows only integers, so `age` is inferred as int64
    path = write(tmp_path, HEADER + rows(60_000) + b"P9,unknown,2000-01-01\n")
    connector = CsvConnector(path)
    connector.declare_names(["age"])  # a name the spec gives, which errors may quote
    assert connector.schema().field("age").type == pa.int64()
    with pytest.raises(TypeParseError) as caught:
        list(connector.batches(10_000))
    assert_named(caught.value, source=str(path), line=60_002, row=60_001, column="age", secret="unknown")
    assert "declare" in str(caught.value)
    # A header name no spec gives is named by its place: it may be a patient's value.
    with pytest.raises(TypeParseError) as caught:
        list(CsvConnector(path).batches(10_000))
    assert_named(caught.value, source=str(path), line=60_002, row=60_001, column="#2", secret="unknown")


def test_missing_declared_column(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\n")
    with pytest.raises(MissingColumn) as caught:
        CsvConnector(path, columns={"smoking": "string"}).schema()
    assert_named(caught.value, source=str(path), line=1, column="smoking")


def test_non_utf8_bytes_name_the_line(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\nM\xfcller,35,1980-01-31\n")
    with pytest.raises(EncodingError) as caught:
        list(CsvConnector(path).batches())
    assert_named(caught.value, source=str(path), line=3)


def test_non_utf8_bytes_far_into_the_file(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + rows(70_000) + b"P\xe9,1,2000-01-01\n" + rows(71_000, 70_000))
    with pytest.raises(EncodingError) as caught:
        list(CsvConnector(path, columns=TYPES).batches(10_000))
    assert_named(caught.value, source=str(path), line=70_002)


def test_truncated_character_at_the_end(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + b"P1,34,1990-05-01\nP2,35,1990-05-01\xe2\x82")
    with pytest.raises(EncodingError) as caught:
        list(CsvConnector(path).batches())
    assert_named(caught.value, source=str(path), line=3)


def test_non_utf8_header(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, b"mrn,gr\xf6\xdfe\nP1,180\n")
    with pytest.raises(EncodingError) as caught:
        CsvConnector(path).schema()
    assert_named(caught.value, source=str(path), line=1)


@pytest.mark.parametrize("data", [b"", b"\n\n\r\n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file(tmp_path: Path, data: bytes, assert_named: NamedCheck) -> None:
    path = write(tmp_path, data)
    with pytest.raises(EmptySource) as caught:
        CsvConnector(path).schema()
    assert_named(caught.value, source=str(path))
    assert "no header" in str(caught.value)


def test_header_only_file(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, HEADER + b"\n")
    with pytest.raises(EmptySource) as caught:
        CsvConnector(path, columns=TYPES).schema()
    assert_named(caught.value, source=str(path), line=1)
    assert "no data rows" in str(caught.value)


def test_missing_file(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(SourceNotFound) as caught:
        list(CsvConnector(path).batches())
    assert_named(caught.value, source=str(path))


def test_a_directory_is_not_a_csv_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        CsvConnector(tmp_path).schema()


def test_duplicate_header_names(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, b"mrn,age,age\nP1,1,2\n")
    with pytest.raises(MalformedRecord) as caught:
        CsvConnector(path).schema()
    assert_named(caught.value, source=str(path), line=1)
    assert "header columns 2 and 3 have the same name" in str(caught.value)
    # A file without a header line: its first patient's values are not quoted.
    headless = write(tmp_path, b"MRN-4711,M\xc3\xbcller,M\xc3\xbcller,1950-04-03\nMRN-4712,A,B,1960-01-01\n")
    with pytest.raises(MalformedRecord) as caught:
        CsvConnector(headless).schema()
    assert "Müller" not in str(caught.value) and "MRN-4711" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "column"), [({"columns": {"age": "integer-ish"}}, "age"), ({"delimiter": ",,"}, None)]
)
def test_invalid_options(tmp_path: Path, options: dict[str, object], column: str | None) -> None:
    with pytest.raises(InvalidOption) as caught:
        CsvConnector(write(tmp_path, HEADER), **options)  # type: ignore[arg-type]
    assert caught.value.column == column


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ("decimal128(10, 2)", b"1.25", pa.decimal128(10, 2)),
        ("timestamp[us, tz=UTC]", b"2020-01-02T03:04:05Z", pa.timestamp("us", tz="UTC")),
        ("STRING", b"1", pa.string()),
        (pa.int8(), b"1", pa.int8()),
    ],
)
def test_type_names(
    tmp_path: Path, spec: str | pa.DataType, value: bytes, expected: pa.DataType, drain: Drain
) -> None:
    path = write(tmp_path, b"v\n" + value + b"\n")
    assert drain(CsvConnector(path, columns={"v": spec}), 10).schema.field("v").type == expected


def test_quoted_value_not_closed_on_its_line(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, b'mrn,note\nP1,ok\nP2,"' + SECRET.encode() + b'\nstill the note",x\nP3,ok\n')
    with pytest.raises(MalformedRecord) as caught:
        list(CsvConnector(path).batches())
    assert_named(caught.value, source=str(path), line=3, row=2, secret=SECRET)
    assert "not closed" in str(caught.value)


def test_text_after_a_closing_quote_is_read_as_pyarrow_reads_it(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, b'mrn,age\n"P"1,34\n')
    assert drain(CsvConnector(path), 10).to_pylist() == [{"mrn": "P1", "age": 34}]


def test_byte_order_mark_of_spreadsheet_exports(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfmrn,age\nP1,34\nP2,x\n")
    assert drain(CsvConnector(path, columns={"mrn": "string"}), 10).schema.names == ["mrn", "age"]
    with pytest.raises(TypeParseError) as caught:
        CsvConnector(path, columns={"age": "int64"}).schema()
    assert (caught.value.line, caught.value.column) == (3, "age")


def test_missing_values_are_null_except_in_text(tmp_path: Path, drain: Drain) -> None:
    path = write(tmp_path, b"country,age,note\nNA,NA,\nCH,34,seen\n")
    assert drain(CsvConnector(path, columns={"age": "int64"}), 10).to_pylist() == [
        {"country": "NA", "age": None, "note": ""},
        {"country": "CH", "age": 34, "note": "seen"},
    ]


def test_batches_of_selects_the_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text("mrn,age,sex\nP1,40,F\nP2,50,M\n")
    table = pa.Table.from_batches(list(CsvConnector(path).batches_of(["sex", "mrn"])))
    assert table.column_names == ["sex", "mrn"]
    assert table.to_pydict() == {"sex": ["F", "M"], "mrn": ["P1", "P2"]}


@pytest.mark.parametrize(
    ("data", "line", "row"),
    [
        # the last field's quote takes in the lines after it, which would be lost as rows
        (b'mrn,note\nP1,ok\nP2,"' + SECRET.encode() + b"\nP3,ok\nP4,ok\n", 3, 2),
        # the last line, ended by a line break or by the end of the file
        (b'mrn,note\nP1,ok\nP2,"' + SECRET.encode() + b"\n", 3, 2),
        (b'mrn,note\nP1,ok\nP2,"' + SECRET.encode(), 3, 2),
    ],
    ids=["middle", "last-line", "end-of-file"],
)
def test_quote_left_open_in_the_last_field(
    tmp_path: Path, data: bytes, line: int, row: int, assert_named: NamedCheck
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(MalformedRecord) as caught:
        list(CsvConnector(path).batches())
    assert_named(caught.value, source=str(path), line=line, row=row, secret=SECRET)
    assert "not closed" in str(caught.value)


def test_nul_character_in_a_value(tmp_path: Path, assert_named: NamedCheck) -> None:
    far = HEADER + rows(60_000) + b"P-NUL\x00" + SECRET.encode() + b",30,1950-01-01\n" + rows(60_010, 60_000)
    path = write(tmp_path, far)
    connector = CsvConnector(path, columns=TYPES)
    connector.declare_names(["mrn"])
    with pytest.raises(EncodingError) as caught:
        list(connector.batches(10_000))
    assert_named(caught.value, source=str(path), line=60_002, row=60_001, column="mrn", secret=SECRET)
    assert "NUL" in str(caught.value)
    # A column the caller's spec does not name is named by its place.
    with pytest.raises(EncodingError) as caught:
        list(CsvConnector(path, columns=TYPES).batches(10_000))
    assert caught.value.column == "#1"


def test_nul_character_in_a_header_name(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, b"mrn,a\x00b\nP1,x\n")
    with pytest.raises(EncodingError) as caught:
        CsvConnector(path).schema()
    assert_named(caught.value, source=str(path), line=1, column="#2")


def test_rescan_reads_fields_longer_than_pythons_csv_limit(tmp_path: Path, assert_named: NamedCheck) -> None:
    # The bad record comes after a 300 KiB value, past the first block, so only the slow re-scan places it.
    long = b"P1," + b"x" * 300_000 + b",1950-01-01\n"
    path = write(tmp_path, HEADER + long + rows(30_000, 2) + b"P9,40,1950-01-01,extra\n")
    with pytest.raises(MalformedRecord) as caught:
        list(CsvConnector(path, columns={"mrn": "string", "age": "string"}).batches(1_000))
    assert_named(caught.value, source=str(path), line=30_001, row=30_000)
    assert "expected 3 fields, found 4" in str(caught.value)


@pytest.mark.parametrize("spec", ["decimal128(50, 2)", "decimal(5, 10)", "timestamp[us, tz=Mars/Olympus]"])
def test_impossible_type_declarations_are_invalid_options(tmp_path: Path, spec: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        CsvConnector(write(tmp_path, HEADER), columns={"age": spec})
    assert caught.value.column == "age"
    assert spec in str(caught.value)


def test_a_source_text_holding_a_password_is_shown_without_it(tmp_path: Path) -> None:
    # A database URL typed wrong reads as a file name; no message may show its password.
    typed = tmp_path / "postgresql+psycopg:" / "postgres:S3cretPa55@127.0.0.1:5432" / "test.csv"
    with pytest.raises(SourceNotFound) as caught:
        CsvConnector(typed).schema()
    assert "S3cretPa55" not in str(caught.value) and "S3cretPa55" not in caught.value.source
    assert ":***@127.0.0.1:5432/test.csv" in str(caught.value)
