"""A binary file that checks its bytes are UTF-8 while a reader streams them, and knows where they are not."""

from __future__ import annotations

import codecs
from pathlib import Path
from types import TracebackType

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
