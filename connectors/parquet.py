"""Parquet files, streamed batch by batch (one row group in memory at a time)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.base import DEFAULT_BATCH_ROWS, Connector
from connectors.errors import (
    EmptySource,
    EncodingError,
    FormatError,
    InvalidOption,
    MissingColumn,
    SourceNotFound,
    mask_credentials,
)
from connectors.utf8 import first_holding


class ParquetConnector(Connector):
    """A Parquet file; `columns` selects and orders the columns read (all of them by default)."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.source = mask_credentials(str(self.path))
        self.columns = list(columns) if columns is not None else None
        self._schema: pa.Schema | None = None

    def schema(self) -> pa.Schema:
        if self._schema is None:
            file = self._open()
            try:
                schema = file.schema_arrow
                if self.columns is not None:
                    schema = pa.schema([self._field(schema, name) for name in self.columns])
                if file.metadata.num_rows == 0:
                    raise EmptySource(self.source, "the file holds no rows")
            finally:
                file.close()
            self._schema = schema
        return self._schema

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        return self.batches_of(self.schema().names, batch_rows)

    def batches_of(
        self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Read only `columns`: Parquet stores columns apart, so the others are never decoded."""
        if batch_rows < 1:
            raise InvalidOption(self.source, "batch_rows must be at least 1")
        full = self.schema()
        return self._read(pa.schema([self._field(full, name) for name in columns]), batch_rows)

    def _read(self, schema: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        file = self._open()
        strings = [i for i, field in enumerate(schema) if _is_text(field.type)]
        row = 0
        try:
            for batch in file.iter_batches(batch_size=batch_rows, columns=schema.names, use_threads=True):
                # Parquet writers should write valid UTF-8 but readers do not check; the store must not
                # receive bytes that later break a query.
                for index in strings:
                    self._check_utf8(batch.column(index), schema.field(index).name, row)
                    if (found := first_holding(batch.column(index), "\x00")) is not None:
                        # No store, policy input or audit entry carries a NUL character.
                        raise EncodingError(
                            self.source,
                            "a text value holds a NUL character",
                            row=row + found + 1,
                            column=schema.field(index).name,
                        )
                row += batch.num_rows
                yield batch
        except (OSError, pa.ArrowException) as exc:
            raise FormatError(
                self.source, f"the file is corrupt past row {row} ({type(exc).__name__})"
            ) from None
        finally:
            file.close()

    def _open(self) -> pq.ParquetFile:
        if not self.path.exists():
            raise SourceNotFound(self.source, "the file does not exist")
        if not self.path.is_file():
            raise FormatError(self.source, "not a regular file")
        try:
            # pre_buffer would fetch the column chunks of every row group up front: the whole file.
            return pq.ParquetFile(self.path, pre_buffer=False)
        except (OSError, pa.ArrowException):
            raise FormatError(self.source, "not a Parquet file (no valid footer)") from None

    def _field(self, schema: pa.Schema, name: str) -> pa.Field:
        """The one column of `schema` named `name` (a file can hold none, or several)."""
        found = schema.get_all_field_indices(name)
        if not found:
            raise MissingColumn(self.source, "the file has no such column", column=name)
        if len(found) > 1:
            raise FormatError(
                self.source, f"{len(found)} columns are named so; rename all but one", column=name
            )
        return schema.field(found[0])

    def _check_utf8(self, array: pa.Array, column: str, row: int) -> None:
        try:
            array.validate(full=True)
        except pa.ArrowInvalid:
            binary = pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary()
            for offset, value in enumerate(array.cast(binary).to_pylist()):
                if value is not None and not _is_utf8(value):
                    raise EncodingError(
                        self.source, "bytes are not valid UTF-8", row=row + offset + 1, column=column
                    ) from None
            raise


def _is_text(t: pa.DataType) -> bool:
    """The string columns a Parquet reader gives, whose bytes it hands on without checking them."""
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
