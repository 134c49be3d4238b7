"""Chunk checks that run in worker processes: on large exports, hashing and JSON parsing use every core.

A worker checks one chunk on its own (hashes, JSON, index sequence, origin, the prev links inside the
chunk) and reports only whether all held, the link into the chunk, and the chunk's leaf hashes and root.
The parent joins chunks. Whenever a worker reports a problem, the parent re-checks that chunk with the
sequential `check_chunk`, which names the precise entry and reason.
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
from typing import Any

from audit.merkle import perfect_root

_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ChunkResult:
    """What a worker found in one chunk."""

    leaves: list[bytes]
    ok: bool  # every entry parsed, indices ran on from `start`, origins matched, inner links held
    first_prev: str | None  # the prev recorded by the chunk's first entry
    root: bytes | None  # the chunk's perfect-subtree root when its length is a power of two


def scan_chunk(start: int, origin: str, lines: list[bytes]) -> ChunkResult:
    """Check one chunk of entry lines in isolation (runs in a worker process)."""
    sha = hashlib.sha256
    b2a = binascii.b2a_base64
    leaves = [sha(b"\x00" + line).digest() for line in lines]
    n = len(lines)
    root = perfect_root(leaves) if n and n & (n - 1) == 0 else None
    try:
        text = b"\n".join(lines).decode("utf-8") + "\n"
    except UnicodeDecodeError:
        return ChunkResult(leaves, False, None, root)
    pos, first_prev, prev = 0, None, None
    find = text.find
    for j in range(n):
        nl = find("\n", pos)
        try:
            obj, end = _scan(text, pos)
        except (ValueError, StopIteration):
            return ChunkResult(leaves, False, None, root)
        if end != nl or type(obj) is not dict:
            return ChunkResult(leaves, False, None, root)
        pos = nl + 1
        idx = obj.get("index")
        if idx != start + j or type(idx) is not int or obj.get("origin") != origin:
            return ChunkResult(leaves, False, None, root)
        if j == 0:
            first_prev = obj.get("prev")
            if type(first_prev) is not str:
                return ChunkResult(leaves, False, None, root)
        elif obj.get("prev") != prev:
            return ChunkResult(leaves, False, None, root)
        prev = b2a(leaves[j], newline=False).decode()
    return ChunkResult(leaves, True, first_prev, root)


@dataclass(frozen=True)
class ScannedChunk:
    """A chunk, where it starts, what the worker found, and the first line after it (if read yet)."""

    start: int
    lines: list[bytes]
    result: ChunkResult
    next_line: Callable[[], bytes | None]


def scan_in_workers(
    chunks: Iterator[list[bytes]], origin: str, workers: int, peek_after: Callable[[], bytes | None]
) -> Iterator[ScannedChunk]:
    """Scanned chunks, in order, with a bounded number in flight. `peek_after` gives the line after
    the last chunk read so far."""
    # spawn, not fork: the caller may have threads (a server, a progress bar) that fork would copy badly.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[tuple[int, list[bytes], Future[ChunkResult]]] = deque()

        def following() -> bytes | None:
            return pending[0][1][0] if pending else peek_after()

        start = 0
        for chunk in chunks:
            pending.append((start, chunk, pool.submit(scan_chunk, start, origin, chunk)))
            start += len(chunk)
            if len(pending) >= 2 * workers:
                first, lines, future = pending.popleft()
                yield ScannedChunk(first, lines, future.result(), following)
        while pending:
            first, lines, future = pending.popleft()
            yield ScannedChunk(first, lines, future.result(), following)
