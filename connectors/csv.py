"""CSV files, streamed with pyarrow's block reader; errors name the line, row and column, never the value."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from connectors.base import DEFAULT_BATCH_ROWS, Connector
from connectors.csv_scan import (
    ends_in_open_quote,
    find_malformed,
    find_unparsable,
    position_of_row,
    read_header,
)
from connectors.errors import (
    ConnectorError,
    EmptySource,
    EncodingError,
    FormatError,
    InvalidOption,
    MalformedRecord,
    MissingColumn,
    SourceNotFound,
    TypeParseError,
    mask_credentials,
)
from connectors.types import parse_type
from connectors.utf8 import Utf8CheckedFile, first_holding

# Types of undeclared columns are inferred from the first block, as pyarrow does; 1 MiB is its default.
_INFERENCE_BLOCK_BYTES = 1 << 20
# Blocks are sized to hold about one batch; the floor keeps long rows from straddling two blocks.
_MIN_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 256 << 20

_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error")
_FIELD_COUNT = re.compile(r"Expected (\d+) columns, got (\d+)")


class CsvConnector(Connector):
    """A CSV file with a header line. `columns` declares types (`{"age": "int64"}`); other columns' types
    are inferred from the first rows. Declared columns must be in the header.

    Every non-empty physical line is one record: values may be quoted but hold no line breaks.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: Mapping[str, str | pa.DataType] | None = None,
        delimiter: str = ",",
    ) -> None:
        self.path = Path(path)
        self.source = mask_credentials(str(self.path))
        if len(delimiter) != 1 or delimiter in '\r\n"':
            raise InvalidOption(
                self.source, "the delimiter must be one character other than a quote or newline"
            )
        self.delimiter = delimiter
        self._declared = {name: parse_type(self.source, name, spec) for name, spec in (columns or {}).items()}
        self._schema: pa.Schema | None = None
        self._text: set[str] = set()
        self._named: set[str] = set(self._declared)
        self._header: list[str] = []
        self._bytes_per_row = 100.0

    def declare_text(self, names: Iterable[str]) -> None:
        """Read these columns as text unless their type was declared: identifiers and codes whose leading
        zeros matter (`00123` inferred as the number 123 would merge patients). Names the header lacks are
        left to the caller's own check."""
        self._text.update(names)
        self._schema = None

    def declare_names(self, names: Iterable[str]) -> None:
        """Header names an error may quote: those the caller's spec gives. Any other column is named by its
        place, since a file without a header line has a patient's values where its names should be."""
        self._named.update(names)

    def schema(self) -> pa.Schema:
        if self._schema is None:
            self._schema = self._infer_schema()
        return self._schema

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        if batch_rows < 1:
            raise InvalidOption(self.source, "batch_rows must be at least 1")
        schema = self.schema()
        block = int(min(max(self._bytes_per_row * batch_rows, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES))
        # Every column's type is fixed now, so no later block can infer differently from schema().
        types = {field.name: field.type for field in schema}
        delivered = 0
        with Utf8CheckedFile(self.path, self.source) as stream:
            reader = self._open(stream, block, types, delivered)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowException, EncodingError) as exc:
                    raise self._translate(exc, stream, delivered) from None
                self._check_text(batch, delivered)
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)
                delivered += batch.num_rows
        if delivered == 0:
            raise EmptySource(self.source, "the file has a header but no data rows")

    def _infer_schema(self) -> pa.Schema:
        if not self.path.exists():
            raise SourceNotFound(self.source, "the file does not exist")
        if not self.path.is_file():
            raise FormatError(self.source, "not a regular file")
        header = read_header(self.path, self.source, self.delimiter)
        if header is None:
            raise EmptySource(self.source, "the file is empty: no header line")
        line, names = header
        if names is None:
            raise MalformedRecord(self.source, "a quoted header name is not closed on its line", line=line)
        self._header = names
        seen: dict[str, int] = {}
        for place, name in enumerate(names, 1):
            if "\x00" in name:
                raise EncodingError(
                    self.source, "the name holds a NUL character", line=line, column=f"#{place}"
                )
            if name in seen:
                # By place, not by name: a file without a header line has a patient's values there.
                raise MalformedRecord(
                    self.source, f"header columns {seen[name]} and {place} have the same name", line=line
                )
            seen[name] = place
        for name, arrow_type in self._declared.items():
            if name not in seen:
                raise MissingColumn(
                    self.source,
                    f"declared as {arrow_type} but the header has no such column",
                    line=line,
                    column=name,
                )
        if ends_in_open_quote(self.path, self.delimiter):
            found = find_malformed(self.path, self.source, self.delimiter, len(names), 0)
            if found is None:
                raise MalformedRecord(self.source, "the last line ends inside a quoted value")
            position, problem = found
            raise MalformedRecord(self.source, problem, line=position.line, row=position.row)
        types = {**{n: pa.string() for n in self._text if n in seen}, **self._declared}
        with Utf8CheckedFile(self.path, self.source) as stream:
            reader = self._open(stream, _INFERENCE_BLOCK_BYTES, types, 0)
            try:
                first = reader.read_next_batch()
            except StopIteration:
                raise EmptySource(self.source, "the file has a header but no data rows", line=line) from None
            except (pa.ArrowException, EncodingError) as exc:
                raise self._translate(exc, stream, 0) from None
        size = self.path.stat().st_size
        self._bytes_per_row = min(size, _INFERENCE_BLOCK_BYTES) / max(first.num_rows, 1)
        # A column empty in every first row infers as null; string is the type that can hold what follows.
        return pa.schema(
            [pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in first.schema]
        )

    def _open(
        self, stream: Utf8CheckedFile, block: int, types: Mapping[str, pa.DataType], delivered: int
    ) -> pacsv.CSVStreamingReader:
        try:
            return pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=block),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=False),
                convert_options=pacsv.ConvertOptions(column_types=dict(types)),
            )
        except (pa.ArrowException, EncodingError) as exc:
            raise self._translate(exc, stream, delivered) from None

    def _check_text(self, batch: pa.RecordBatch, delivered: int) -> None:
        """Refuse a text value holding a NUL character (no store, policy input or audit entry carries one)
        or a line break: values hold none, so one is a quote left open that took in the lines after it."""
        for index, field in enumerate(batch.schema):
            found = first_holding(batch.column(index), "\x00\r\n")
            if found is None:
                continue
            row = delivered + found + 1
            if "\x00" in batch.column(index)[found].as_py():
                position = position_of_row(self.path, self.source, self.delimiter, row)
                place = self._header.index(field.name) if field.name in self._header else index
                raise EncodingError(
                    self.source,
                    "a text value holds a NUL character",
                    line=None if position is None else position.line,
                    row=row,
                    column=self._shown_column(field.name, place),
                )
            malformed = find_malformed(self.path, self.source, self.delimiter, len(self._header), row - 1)
            if malformed is None:
                raise MalformedRecord(self.source, "a quoted value is not closed on its line", row=row)
            position, problem = malformed
            raise MalformedRecord(self.source, problem, line=position.line, row=position.row)

    def _shown_column(self, name: str, index: int) -> str:
        """A column as an error may name it: by its name when the caller's spec gives it, else by its place,
        since a file without a header line has a patient's values where its names should be."""
        return name if name in self._named else f"#{index + 1}"

    def _translate(self, exc: Exception, stream: Utf8CheckedFile, delivered: int) -> ConnectorError:
        """A typed error for pyarrow's. Its message quotes the row, so it is never passed on."""
        if stream.error is not None:
            return stream.error
        if isinstance(exc, ConnectorError):
            return exc
        message = str(exc)
        if match := _CONVERSION.search(message):
            return self._unparsable(int(match[1]), delivered)
        if match := _FIELD_COUNT.search(message):
            expected = int(match[1])
            found = find_malformed(self.path, self.source, self.delimiter, expected, delivered)
            if found is None:
                return MalformedRecord(
                    self.source, f"a record past row {delivered} does not have {expected} fields"
                )
            position, problem = found
            return MalformedRecord(self.source, problem, line=position.line, row=position.row)
        if "Empty CSV file" in message:
            return EmptySource(self.source, "the file is empty: no header line")
        return MalformedRecord(
            self.source, f"the CSV reader failed past row {delivered} ({type(exc).__name__})"
        )

    def _unparsable(self, index: int, delivered: int) -> TypeParseError:
        name = self._header[index] if index < len(self._header) else f"#{index + 1}"
        column = self._shown_column(name, index)
        if name in self._declared:
            arrow_type, how = self._declared[name], ""
        elif self._schema is not None and self._schema.get_field_index(name) >= 0:
            arrow_type = self._schema.field(name).type
            how = " (inferred from the first rows; declare the column's type to change it)"
        else:
            return TypeParseError(self.source, "a value does not parse as its column's type", column=column)
        position = find_unparsable(self.path, self.source, self.delimiter, index, arrow_type, delivered)
        if position is None:
            return TypeParseError(
                self.source,
                f"a value past row {delivered} does not parse as {arrow_type}{how}",
                column=column,
            )
        return TypeParseError(
            self.source,
            f"value does not parse as {arrow_type}{how}",
            line=position.line,
            row=position.row,
            column=column,
        )
