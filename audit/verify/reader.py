"""Reading an export file: header, entry lines in chunks (with one-line lookahead), then the checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import IO

from audit import export_format
from audit.errors import AuditIntegrityError

# Entry lines per chunk: a chunk's text (about 2 MB) stays in the CPU cache while it is hashed and parsed.
CHUNK = 1 << 12


class ExportReader:
    """Streams an export from any binary reader; the verifier never needs the whole file in memory."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._pushback: list[bytes] = []
        self.consumed = 0  # entry lines handed out so far
        self.origin, self.size = self._header()

    def _header(self) -> tuple[str, int]:
        magic = self._stream.readline()
        if magic != export_format.MAGIC:
            raise AuditIntegrityError("malformed_export", "not a fedgate audit export (bad first line)")
        origin_line = self._stream.readline()
        if not origin_line.startswith(export_format.ORIGIN_PREFIX) or not origin_line.endswith(b"\n"):
            raise AuditIntegrityError("malformed_export", "export has no 'origin' line")
        try:
            origin = origin_line[len(export_format.ORIGIN_PREFIX) : -1].decode("utf-8")
        except UnicodeDecodeError:
            raise AuditIntegrityError("malformed_export", "export origin is not UTF-8") from None
        size_line = self._stream.readline()
        size = export_format.parse_size(size_line.rstrip(b"\n")) if size_line.endswith(b"\n") else None
        if size is None or not origin:
            raise AuditIntegrityError("malformed_export", "export has no valid 'size' line")
        return origin, size

    def _next_line(self) -> bytes | None:
        if self._pushback:
            return self._pushback.pop()
        line = self._stream.readline()
        return line or None

    def peek(self) -> bytes | None:
        """The next raw line (with its newline) without consuming it."""
        line = self._next_line()
        if line is not None:
            self._pushback.append(line)
        return line

    def entry_chunks(self) -> Iterator[list[bytes]]:
        """The `size` entry lines without their newlines, in chunks; a short file ends early."""
        remaining = self.size
        while remaining:
            want = min(CHUNK, remaining)
            raw = [self._pushback.pop() for _ in range(min(want, len(self._pushback)))]
            raw.extend(islice(self._stream, want - len(raw)))
            if not raw:
                return
            remaining -= len(raw)
            self.consumed += len(raw)
            # A last line without its newline is kept whole; the checkpoint that should follow is missing.
            yield [line[:-1] if line[-1:] == b"\n" else line for line in raw]
            if len(raw) < want:
                return

    def skip_to_rest(self) -> None:
        """The caller read the entries itself and left the stream at the checkpoint."""
        self._pushback.clear()
        self.consumed = self.size

    def rest(self) -> bytes:
        """Everything after the entries: the signed checkpoint note."""
        head = b"".join(reversed(self._pushback))
        self._pushback.clear()
        return head + self._stream.read()


def export_checkpoint(stream: IO[bytes]) -> bytes:
    """The signed checkpoint note that ends an export, its entries skipped unread (an earlier export given
    as the checkpoint to prove growth from: its own entries are not verified here). Raises
    AuditIntegrityError when the stream is no export, or ends before its last entry."""
    reader = ExportReader(stream)
    for _ in reader.entry_chunks():
        pass
    if reader.consumed < reader.size:
        raise AuditIntegrityError(
            "truncated", f"the export announces {reader.size} entries but holds {reader.consumed}"
        )
    return reader.rest()
