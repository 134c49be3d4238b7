"""The export file format (pure; shared by the writer's `export` and the offline verifier).

    fedgate-audit-export/v1\\n
    origin <log name>\\n
    size <n>\\n
    <entry 0 stored bytes>\\n            (RFC 8785 JSON never contains a raw newline)
    …
    <entry n-1 stored bytes>\\n
    <signed checkpoint note of size n, with the log's signature and any witness cosignature lines>

The entries are exactly the bytes that were hashed; the note runs to the end of the file.
"""

from __future__ import annotations

import re

MAGIC = b"fedgate-audit-export/v1\n"
ORIGIN_PREFIX = b"origin "
SIZE_PREFIX = b"size "
_SIZE = re.compile(rb"^(0|[1-9][0-9]{0,18})$")


def header(origin: str, size: int) -> bytes:
    """The three header lines."""
    return MAGIC + ORIGIN_PREFIX + origin.encode() + b"\n" + SIZE_PREFIX + str(size).encode() + b"\n"


def parse_size(line: bytes) -> int | None:
    """The entry count from a `size <n>` line (without its newline), or None when malformed."""
    if not line.startswith(SIZE_PREFIX):
        return None
    return parse_tree_size(line[len(SIZE_PREFIX) :])


MAX_TREE_SIZE = 2**53 - 1
"""The largest tree size anything here reads: an entry's index is a JSON number of canonical JSON."""


def parse_tree_size(digits: bytes | str) -> int | None:
    """A tree size in ASCII decimal digits without leading zeroes, at most `MAX_TREE_SIZE`; None otherwise
    (str.isdigit would take digits such as "²", which int() refuses or reads otherwise)."""
    raw = digits.encode("utf-8", "surrogatepass") if isinstance(digits, str) else digits
    if not _SIZE.match(raw):
        return None
    size = int(raw)
    return size if size <= MAX_TREE_SIZE else None
