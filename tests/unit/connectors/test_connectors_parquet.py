"""ParquetConnector: column selection, bounded streaming and typed errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import (
    Connector,
    EmptySource,
    EncodingError,
    FormatError,
    MissingColumn,
    ParquetConnector,
    SourceNotFound,
)

Drain = Callable[[Connector, int], pa.Table]
NamedCheck = Callable[..., None]

COHORT = pa.table(
    {
        "mrn": pa.array([f"P{i:05d}" for i in range(50)]),
        "age": pa.array(range(50), pa.int16()),
        "hba1c": pa.array([5.0 + i / 10 for i in range(50)]),
    }
)


def write(tmp_path: Path, table: pa.Table, **options: object) -> Path:
    path = tmp_path / "cohort.parquet"
    pq.write_table(table, path, **options)
    return path


def test_reads_every_column_with_its_type(tmp_path: Path, drain: Drain) -> None:
    table = drain(ParquetConnector(write(tmp_path, COHORT)), 7)
    assert table.equals(COHORT)


def test_columns_select_and_order(tmp_path: Path, drain: Drain) -> None:
    connector = ParquetConnector(write(tmp_path, COHORT), columns=["hba1c", "mrn"])
    assert connector.schema().names == ["hba1c", "mrn"]
    assert drain(connector, 100).equals(COHORT.select(["hba1c", "mrn"]))


def test_streams_bounded_batches_without_loading_the_file(tmp_path: Path) -> None:
    count = 2_000_000
    big = pa.table({"id": np.arange(count, dtype=np.int64), "value": np.arange(count, dtype=np.float64)})
    path = write(tmp_path, big, row_group_size=100_000)
    in_memory = big.nbytes
    del big
    connector = ParquetConnector(path)
    seen = 0
    peak = 0
    for batch in connector.batches(10_000):
        assert batch.num_rows <= 10_000
        seen += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes())
        del batch
    assert seen == count
    # One row group (1.6 MB decoded) at a time, not the 32 MB table.
    assert peak < in_memory / 4


def test_missing_file(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = tmp_path / "absent.parquet"
    with pytest.raises(SourceNotFound) as caught:
        ParquetConnector(path).schema()
    assert_named(caught.value, source=str(path))


@pytest.mark.parametrize("data", [b"", b"mrn,age\nP1,34\n" * 10], ids=["zero-bytes", "csv-text"])
def test_not_a_parquet_file(tmp_path: Path, data: bytes, assert_named: NamedCheck) -> None:
    path = tmp_path / "cohort.parquet"
    path.write_bytes(data)
    with pytest.raises(FormatError) as caught:
        list(ParquetConnector(path).batches())
    assert_named(caught.value, source=str(path))


def test_missing_column(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, COHORT)
    with pytest.raises(MissingColumn) as caught:
        ParquetConnector(path, columns=["mrn", "smoking"]).schema()
    assert_named(caught.value, source=str(path), column="smoking")


def test_file_without_rows(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, COHORT.slice(0, 0))
    connector = ParquetConnector(path)
    with pytest.raises(EmptySource) as caught:
        list(connector.batches())
    assert_named(caught.value, source=str(path))
    with pytest.raises(EmptySource):
        connector.schema()  # asking again must not find a schema cached by the first attempt


def test_string_column_with_non_utf8_bytes(tmp_path: Path, assert_named: NamedCheck) -> None:
    # Writers do not validate string columns, so a broken writer can store raw bytes in one.
    raw = pa.array([b"P1", b"P2", b"M\xfcller"], pa.binary())
    broken = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    path = write(tmp_path, pa.table({"name": broken, "age": [1, 2, 3]}))
    with pytest.raises(EncodingError) as caught:
        list(ParquetConnector(path).batches(2))
    assert_named(caught.value, source=str(path), row=3, column="name")


def test_batches_of_reads_only_the_named_columns_in_their_order(tmp_path: Path) -> None:
    bad = COHORT.append_column("note", pa.array([b"\xff"] * 50, pa.binary()).cast(pa.string(), safe=False))
    connector = ParquetConnector(write(tmp_path, bad))
    # The column with invalid UTF-8 is never decoded, so it cannot stop a read that does not ask for it.
    table = pa.Table.from_batches(list(connector.batches_of(["hba1c", "mrn"], 7)))
    assert table.column_names == ["hba1c", "mrn"]
    assert table.equals(COHORT.select(["hba1c", "mrn"]))
    with pytest.raises(EncodingError):
        list(connector.batches_of(["note"]))
    with pytest.raises(MissingColumn):
        list(connector.batches_of(["mrn", "ssn"]))


def test_large_string_column_with_non_utf8_bytes(tmp_path: Path, assert_named: NamedCheck) -> None:
    raw = pa.array([b"P1", b"P2", b"M\xfcller"], pa.large_binary())
    broken = pa.Array.from_buffers(pa.large_string(), len(raw), raw.buffers())
    path = write(tmp_path, pa.table({"name": broken, "age": [1, 2, 3]}))
    assert ParquetConnector(path).schema().field("name").type == pa.large_string()
    with pytest.raises(EncodingError) as caught:
        list(ParquetConnector(path).batches(2))
    assert_named(caught.value, source=str(path), row=3, column="name")


def test_two_columns_of_one_name(tmp_path: Path, assert_named: NamedCheck) -> None:
    twice = pa.Table.from_arrays([pa.array(["P1", "P2"]), pa.array([1, 2]), pa.array([3, 4])],
                                 names=["mrn", "age", "age"])  # fmt: skip
    path = write(tmp_path, twice)
    for read in (lambda: ParquetConnector(path, columns=["mrn", "age"]).schema(),
                 lambda: list(ParquetConnector(path).batches()),
                 lambda: list(ParquetConnector(path).batches_of(["age"]))):  # fmt: skip
        with pytest.raises(FormatError) as caught:
            read()
        assert_named(caught.value, source=str(path), column="age")
        assert "2 columns" in str(caught.value)
    # A column the caller does not ask for may be ambiguous without stopping the read.
    table = pa.Table.from_batches(list(ParquetConnector(path, columns=["mrn"]).batches()))
    assert table.column("mrn").to_pylist() == ["P1", "P2"]
    assert ParquetConnector(path).batches_of(["mrn"]).__next__().column(0).to_pylist() == ["P1", "P2"]


def test_nul_character_in_a_text_value(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path, pa.table({"mrn": ["P1", "P2", "MRN-\x00SECRET-4711"], "age": [1, 2, 3]}))
    with pytest.raises(EncodingError) as caught:
        list(ParquetConnector(path).batches(2))
    assert_named(caught.value, source=str(path), row=3, column="mrn", secret="SECRET-4711")
    assert "NUL" in str(caught.value)
