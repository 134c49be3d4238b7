"""Slow re-scans of a CSV file that name the exact line and row pyarrow's fast reader could not.

They run only after the fast reader failed, so they trade speed for precision: Python's csv module on one
physical line at a time, which matches pyarrow's reading when values hold no line breaks (the connector
reads with `newlines_in_values=False`, so every non-empty physical line is one record).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from connectors.errors import EncodingError

_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Position:
    """Where a record sits: its physical line in the file and its data row (1-based, header excluded)."""

    line: int
    row: int


def physical_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes with terminator) of every physical line, split as pyarrow splits."""
    # latin-1 maps each byte to one character, so lengths are byte counts; newline="" ends lines at \n, \r
    # and \r\n alike (pyarrow accepts all three) and leaves the terminators in place.
    with path.open(encoding="latin-1", newline="") as text:
        offset = 0
        for number, line in enumerate(text, start=1):
            raw = line.encode("latin-1")
            yield number, offset, raw
            offset += len(raw)


def line_at_offset(path: Path, offset: int) -> int:
    """The physical line holding byte `offset`."""
    number = 1
    for number, start, raw in physical_lines(path):
        if offset < start + len(raw):
            return number
    return number


def records(path: Path, source: str, delimiter: str) -> Iterator[tuple[int, list[str] | None]]:
    """(line number, fields) of every non-empty line, the header first; None for an unclosed quote."""
    for number, _, raw in physical_lines(path):
        content = raw.rstrip(b"\r\n")
        if number == 1:
            content = content.removeprefix(codecs.BOM_UTF8)  # spreadsheet exports start so; pyarrow skips it
        if not content:
            continue  # pyarrow skips empty lines, so they are not rows
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError(source, "bytes are not valid UTF-8", line=number) from None
        yield number, _fields(text, delimiter)


def _fields(text: str, delimiter: str) -> list[str] | None:
    """The fields of one line, or None when a quoted value runs past its end (pyarrow rejects it too)."""
    if len(text) > csv.field_size_limit():
        # No field is longer than its line; pyarrow reads fields of any length, and so must the re-scan
        # (the module's limit, 128 KiB by default, only ever grows here).
        csv.field_size_limit(len(text))
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return None
    # Strict mode also rejects text after a closing quote, which pyarrow (and lenient mode) accept.
    return next(csv.reader([text], delimiter=delimiter))


def ends_in_open_quote(path: Path, delimiter: str) -> bool:
    """Whether the file's last line has no line end and opens a quoted value it does not close: pyarrow
    reads such a value to the end of the file without a word, where a line end would have made it fail."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        if end == 0:
            return False
        file.seek(end - 1)
        if file.read(1) in (b"\n", b"\r"):
            return False
        tail = b""
        while end > 0:  # back to the last line break, a block at a time
            start = max(0, end - (1 << 16))
            file.seek(start)
            tail = file.read(end - start) + tail
            end = start
            cut = max(tail.rfind(b"\n"), tail.rfind(b"\r"))
            if cut >= 0:
                tail = tail[cut + 1 :]
                break
    # Bytes that are no UTF-8 are reported while the file streams, with their line.
    return _fields(tail.decode("utf-8", errors="replace"), delimiter) is None


def position_of_row(path: Path, source: str, delimiter: str, row: int) -> Position | None:
    """Where data row `row` (1-based) sits, or None past the last one."""
    for position, _ in _data_rows(path, source, delimiter, row - 1):
        return position
    return None


def read_header(path: Path, source: str, delimiter: str) -> tuple[int, list[str] | None] | None:
    """The header line's number and names (None if a quote is unclosed), or None for a file without lines."""
    return next(records(path, source, delimiter), None)


def _data_rows(
    path: Path, source: str, delimiter: str, after_rows: int
) -> Iterator[tuple[Position, list[str] | None]]:
    """Data records past the first `after_rows` (rows the fast reader already delivered)."""
    rows = records(path, source, delimiter)
    next(rows, None)  # the header
    for row, (line, fields) in enumerate(rows, start=1):
        if row > after_rows:
            yield Position(line, row), fields


def find_malformed(
    path: Path, source: str, delimiter: str, expected: int, after_rows: int
) -> tuple[Position, str] | None:
    """The first record past `after_rows` that does not split into `expected` fields, and what is wrong."""
    for position, fields in _data_rows(path, source, delimiter, after_rows):
        if fields is None:
            return position, "a quoted value is not closed on its line (values may not hold line breaks)"
        if len(fields) != expected:
            return position, f"expected {expected} fields, found {len(fields)}"
    return None


def find_unparsable(
    path: Path, source: str, delimiter: str, index: int, arrow_type: pa.DataType, after_rows: int
) -> Position | None:
    """The first record past `after_rows` whose field `index` pyarrow cannot convert to `arrow_type`."""
    chunk: list[tuple[Position, str]] = []
    for position, fields in _data_rows(path, source, delimiter, after_rows):
        if fields is not None and index < len(fields):
            chunk.append((position, fields[index]))
        if len(chunk) == _CHUNK_ROWS:
            if (found := _first_unparsable(chunk, arrow_type)) is not None:
                return found
            chunk = []
    return _first_unparsable(chunk, arrow_type) if chunk else None


def _first_unparsable(chunk: list[tuple[Position, str]], arrow_type: pa.DataType) -> Position | None:
    """Bisect a chunk down to its first value that does not convert."""
    if _converts([value for _, value in chunk], arrow_type):
        return None
    while len(chunk) > 1:
        half = len(chunk) // 2
        left = chunk[:half]
        chunk = left if not _converts([value for _, value in left], arrow_type) else chunk[half:]
    return chunk[0][0]


def _converts(values: list[str], arrow_type: pa.DataType) -> bool:
    """Whether pyarrow's own CSV conversion accepts every value, so both readers agree on what fails."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["value"])
    writer.writerows([value] for value in values)
    try:
        pacsv.read_csv(
            io.BytesIO(buffer.getvalue().encode("utf-8")),
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={"value": arrow_type}),
        )
    except pa.ArrowInvalid:
        return False
    return True
