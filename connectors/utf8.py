"""A binary file that checks its bytes are UTF-8 while a reader streams them, and knows where they are not."""

from __future__ import annotations

import codecs
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc

from connectors.csv_scan import line_at_offset
from connectors.errors import EncodingError


class Utf8CheckedFile:
    """Wraps a file for pyarrow's stream readers; the first invalid byte raises `EncodingError` with its line.

    pyarrow propagates the exception raised in `read`; it is also kept in `error` so the caller can report it
    if a future pyarrow wraps it in its own exception type.
    """

    def __init__(self, path: Path, source: str) -> None:
        self._path = path
        self._source = source
        self._file = path.open("rb")
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._position = 0
        self.error: EncodingError | None = None
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        pending = len(self._decoder.getstate()[0])
        try:
            # Decoding is the cheapest complete UTF-8 check CPython offers (C speed, ASCII fast path).
            self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            offset = self._position - pending + exc.start
            self.error = EncodingError(
                self._source, "bytes are not valid UTF-8", line=line_at_offset(self._path, offset)
            )
            raise self.error from None
        self._position += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self._file.close()
        self.closed = True

    def __enter__(self) -> Utf8CheckedFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def is_text(value: str) -> bool:
    """Whether UTF-8 can hold `value`: JSON's escapes can write a lone surrogate (`\\ud800`), which no
    store, policy input or audit entry can carry."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def first_holding(array: pa.Array, chars: str) -> int | None:
    """Index of the first value of a text column that holds any of `chars` (ASCII characters such as NUL),
    None when none does or the column is no text. The values' bytes are searched first, at memchr speed;
    only a hit is looked for value by value."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        if first_holding(array.dictionary, chars) is None:
            return None
        return first_holding(array.dictionary_decode(), chars)
    if pa.types.is_string_view(kind):
        array, kind = array.cast(pa.large_string()), pa.large_string()
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)) or len(array) == 0:
        return None
    _, offsets, data = array.buffers()
    if offsets is None or data is None:
        return None
    offset_type = pa.int64() if pa.types.is_large_string(kind) else pa.int32()
    bounds = pa.Array.from_buffers(offset_type, len(array) + 1, [None, offsets], offset=array.offset)
    start, end = bounds[0].as_py(), bounds[-1].as_py()
    window = data.slice(start, end - start).to_pybytes()
    if not any(char.encode() in window for char in chars):
        return None
    pattern = "[" + "".join(f"\\x{ord(char):02x}" for char in chars) + "]"
    index: int = pc.index(pc.match_substring_regex(array, pattern), True).as_py()
    return None if index < 0 else index
