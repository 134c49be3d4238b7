"""Entry-by-entry checks of an export: re-hash each entry, check its index, origin and `prev` link.

The fast path handles a chunk in a tight loop; the first anomaly goes to `_diagnose`, which looks at the
neighbouring entries to name what happened (an entry altered, missing, duplicated, inserted, reordered).
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.errors import AuditIntegrityError
from audit.notes import b64

# The C scanner behind json.loads, called on each line directly: about twice as fast as json.loads.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


@dataclass
class ChainState:
    """What the check of entry i needs from entries before it."""

    origin: str
    index: int = 0
    prev_leaf: bytes = bytes(32)
    prev_line: bytes | None = None


def parse_entry(line: bytes) -> dict[str, Any] | None:
    """An entry line (without its newline) as a JSON object, or None when it is not one."""
    try:
        text = line.decode("utf-8")
        obj, end = _scan(text, 0)
    except (UnicodeDecodeError, ValueError, StopIteration, RecursionError):
        return None
    if end != len(text) or type(obj) is not dict:
        return None
    return obj


def check_chunk(state: ChainState, lines: list[bytes], peek: Callable[[], bytes | None]) -> list[bytes]:
    """Check a chunk of entry lines following `state`; returns their leaf hashes, or raises at the first
    bad entry. `peek` yields the line after the chunk (for the diagnosis of the last one)."""
    b2a = binascii.b2a_base64
    leaves = [hashlib.sha256(b"\x00" + line).digest() for line in lines]
    # prevs[j] is what entry j must record: the leaf hash of the entry before it.
    prevs = [b64(state.prev_leaf), *(b2a(h, newline=False).decode() for h in leaves[:-1])]
    try:
        text = b"\n".join(lines).decode("utf-8") + "\n"
    except UnicodeDecodeError:
        bad = 0
    else:
        bad = _first_bad(text, state.index, state.origin, prevs)
    if bad >= 0:
        _explain(state, lines, prevs, bad, peek)
    state.index += len(lines)
    state.prev_leaf = leaves[-1]
    state.prev_line = lines[-1]
    return leaves


def _first_bad(text: str, start: int, origin: str, prevs: list[str]) -> int:
    """The position of the first entry that is not as expected, or -1: the tight loop of verification.

    The chunk is decoded once and each entry is scanned where its line starts; a scan that runs past its
    line's end (a raw newline inside a value) shows as a mismatch with the next newline.
    """
    scan, find = _scan, text.find
    pos = 0
    for j, prev in enumerate(prevs):
        nl = find("\n", pos)
        try:
            obj, end = scan(text, pos)
        except (ValueError, StopIteration, RecursionError):  # nested past the parser's depth
            return j
        if end != nl or type(obj) is not dict:
            return j
        pos = nl + 1
        get = obj.get
        idx = get("index")
        if idx != start + j or type(idx) is not int or get("prev") != prev or get("origin") != origin:
            return j
    return -1


def _explain(
    state: ChainState, lines: list[bytes], prevs: list[str], bad: int, peek: Callable[[], bytes | None]
) -> None:
    """Re-check entries one by one from `bad` and raise the precise error for the first bad one."""
    origin = state.origin
    for j in range(bad, len(lines)):
        line, i = lines[j], state.index + j
        obj = parse_entry(line)
        if obj is None:
            if line == origin.encode():
                # The checkpoint note (it starts with the origin) sits where entry i should be.
                raise _fail(
                    "truncated", f"the entries end before entry {i}", i, f"entry {i}", "the checkpoint"
                )
            if j == len(lines) - 1 and peek() is None:
                # The file's last line, with no checkpoint after it: a copy that stopped part-way.
                raise AuditIntegrityError(
                    "truncated", f"the export ends inside entry {i}, and no checkpoint follows", index=i
                )
            raise AuditIntegrityError(
                "malformed_entry", f"entry {i} is not a JSON object on one line", index=i
            )
        idx = obj.get("index")
        if idx != i or type(idx) is not int or obj.get("prev") != prevs[j] or obj.get("origin") != origin:
            prev_line = lines[j - 1] if j else state.prev_line
            nxt = lines[j + 1] if j + 1 < len(lines) else peek()
            _diagnose(i, obj, line, prev_line, prevs[j], origin, nxt)


def _b64_leaf(line: bytes) -> str:
    return b64(hashlib.sha256(b"\x00" + line).digest())


def _fail(reason: str, message: str, index: int, expected: object, found: object) -> AuditIntegrityError:
    return AuditIntegrityError(reason, message, index=index, expected=str(expected), found=str(found))


def _diagnose(
    i: int,
    obj: dict[str, Any],
    line: bytes,
    prev_line: bytes | None,
    expected_prev: str,
    origin: str,
    next_line: bytes | None,
) -> None:
    nxt = parse_entry(next_line.rstrip(b"\n")) if next_line is not None else None
    next_index = nxt.get("index") if nxt is not None else None
    next_links_here = nxt is not None and nxt.get("prev") == _b64_leaf(line)
    found = obj.get("index")
    if not isinstance(found, int) or isinstance(found, bool):
        raise _fail("malformed_entry", f"entry {i} has no integer index", i, i, repr(found))
    if found != i:
        if found == i + 1 and next_index == i:
            raise _fail("reordered", f"entries {i} and {i + 1} are out of order", i, i, found)
        if next_index == i + 1:
            raise _fail("altered", f"entry {i} was altered: its index field reads {found}", i, i, found)
        if found > i:
            raise _fail("missing", f"entry {i} is missing (the next entry present is {found})", i, i, found)
        if line == prev_line:
            raise _fail("duplicate", f"entry {found} appears twice (again at position {i})", i, i, found)
        if found == i - 1 and next_links_here:
            # The next entry chains to this one, so the other claimant of index i-1 is the intruder.
            raise _fail("inserted", f"an entry outside the chain was inserted at position {i - 1}", i - 1,
                        i - 1, found)  # fmt: skip
        raise _fail(
            "inserted", f"an extra entry was inserted: another entry claims index {found}", i, i, found
        )
    if obj.get("origin") != origin:
        raise _fail("altered", f"entry {i} names another log", i, origin, obj.get("origin"))
    recorded = obj.get("prev")
    # The link between entries i-1 and i is broken. If entry i still matches what entry i+1 recorded,
    # entry i is intact and entry i-1 changed; otherwise entry i itself (its prev field) changed.
    if i > 0 and (next_line is None or next_links_here):
        raise _fail("altered", f"entry {i - 1} was altered: its hash is not the prev entry {i} recorded",
                    i - 1, recorded, expected_prev)  # fmt: skip
    raise _fail("altered", f"entry {i} was altered: its prev does not match entry {i - 1}'s hash", i,
                expected_prev, recorded)  # fmt: skip
