"""Checking a large export file with every core: worker processes each read, hash and parse a chunk.

The parent only finds where each chunk of entry lines starts in the file (a newline scan); each worker
reads its byte range itself, checks the chunk on its own (hashes, JSON, index sequence, origin, the prev
links inside the chunk) and sends back only whether all held, the link into the chunk, its last leaf and
its subtree root. The parent joins chunks. Whenever a worker reports a problem, the parent re-reads that
chunk and runs the sequential `check_chunk`, which names the precise entry and reason.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import IO, Any

from audit.merkle import perfect_root

_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_BLOCK = 1 << 23


@dataclass(frozen=True)
class Chunk:
    """Entry lines [start, start + count) occupy bytes [offset, offset + length) of the file."""

    start: int
    count: int
    offset: int
    length: int


@dataclass(frozen=True)
class ChunkResult:
    """What a worker found in one chunk."""

    ok: bool  # every entry parsed, indices ran on from `start`, origins matched, inner links held
    first_prev: str | None  # the prev recorded by the chunk's first entry
    last_leaf: bytes
    root: bytes | None  # the chunk's perfect-subtree root when its length is a power of two
    leaves: list[bytes]  # only when asked for


def chunk_table(f: IO[bytes], offset: int, size: int, chunk: int) -> tuple[list[Chunk], int]:
    """Split the `size` entry lines starting at `offset` into chunks; also returns where they end.
    A file with fewer lines yields fewer (the caller reports it as truncated)."""
    f.seek(offset)
    table: list[Chunk] = []
    lines, in_chunk, chunk_offset, block_offset = 0, 0, offset, offset
    while lines < size:
        block = f.read(_BLOCK)
        if not block:
            break
        i = 0
        find = block.find
        while lines < size:
            j = find(b"\n", i)
            if j < 0:
                break
            i = j + 1
            lines += 1
            in_chunk += 1
            if in_chunk == chunk:
                end = block_offset + i
                table.append(Chunk(lines - in_chunk, in_chunk, chunk_offset, end - chunk_offset))
                chunk_offset, in_chunk = end, 0
        block_offset += i if lines >= size else len(block)
    if in_chunk:
        table.append(Chunk(lines - in_chunk, in_chunk, chunk_offset, block_offset - chunk_offset))
    return table, block_offset


def read_lines(path: str, chunk: Chunk) -> list[bytes]:
    """The chunk's entry lines, without their newlines."""
    with open(path, "rb") as f:  # noqa: PTH123 - workers get a plain str path across the process boundary
        f.seek(chunk.offset)
        data = f.read(chunk.length)
    return data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")


def scan_chunk(path: str, chunk: Chunk, origin: str, want_leaves: bool) -> ChunkResult:
    """Check one chunk in isolation (runs in a worker process)."""
    lines = read_lines(path, chunk)
    sha = hashlib.sha256
    leaves = [sha(b"\x00" + line).digest() for line in lines]
    n = len(lines)
    root = perfect_root(leaves) if n == chunk.count and n & (n - 1) == 0 else None

    def result(ok: bool, first_prev: str | None) -> ChunkResult:
        return ChunkResult(ok, first_prev, leaves[-1] if leaves else b"", root, leaves if want_leaves else [])

    if n != chunk.count:
        return result(False, None)
    try:
        text = b"\n".join(lines).decode("utf-8") + "\n"
    except UnicodeDecodeError:
        return result(False, None)
    b2a, find = binascii.b2a_base64, text.find
    pos, first_prev, prev, start = 0, None, None, chunk.start
    for j in range(n):
        nl = find("\n", pos)
        try:
            obj, end = _scan(text, pos)
        except (ValueError, StopIteration, RecursionError):  # nested past the parser's depth
            return result(False, None)
        if end != nl or type(obj) is not dict:
            return result(False, None)
        pos = nl + 1
        idx = obj.get("index")
        if idx != start + j or type(idx) is not int or obj.get("origin") != origin:
            return result(False, None)
        if j == 0:
            first_prev = obj.get("prev")
            if type(first_prev) is not str:
                return result(False, None)
        elif obj.get("prev") != prev:
            return result(False, None)
        prev = b2a(leaves[j], newline=False).decode()
    return result(True, first_prev)


def scan_in_workers(
    path: str, table: list[Chunk], origin: str, workers: int, want_leaves: Callable[[Chunk], bool]
) -> Iterator[tuple[Chunk, ChunkResult]]:
    """(chunk, result) in file order, with a bounded number of chunks in flight."""
    # spawn, not fork: the caller may have threads (a server, a progress bar) that fork would copy badly.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[tuple[Chunk, Future[ChunkResult]]] = deque()
        for chunk in table:
            pending.append((chunk, pool.submit(scan_chunk, path, chunk, origin, want_leaves(chunk))))
            if len(pending) >= 4 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
