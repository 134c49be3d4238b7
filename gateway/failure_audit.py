"""Audit entries of failures by callers nobody authenticated, bounded per kind of failure.

Every failed authentication and every refusal of an unauthenticated request (a route that does not exist,
a body refused before any token was read) is on record, but a flood of them must not grow the append-only
log without limit: anyone who can reach the port can send one, and 360 bad tokens a second from one client
wrote 4.4 MB of log in 10 s. Each kind of failure (its event type, reason and route) has a token bucket:
`BURST` entries at once, then `RATE_PER_S` a second. A failure that finds the bucket empty is held back and
counted; the next entry of its kind says how many were (`suppressed`), and one is written for them as soon
as the bucket allows should no other failure of that kind come. Every failure thus counts in exactly one
entry: the number of failures of a kind is the sum over its entries of 1 + `suppressed`. A held-back
failure's token digest is not kept (a flood's digests are what would grow the log).

The caller is refused all the same, at once: only the writing of its entry is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

RATE_PER_S: Final = 2.0
"""Entries a second, per kind of failure, once a burst is spent."""
BURST: Final = 20
"""Entries of one kind of failure written one by one before the rate applies."""
MAX_KINDS: Final = 256
"""Kinds of failure tracked apart; any further kind shares one bucket with the others of its event type (a
kind holds what the caller's request chose: a route, a reason)."""
OTHER: Final = "other kinds"

Write = Callable[[int], Awaitable[None]]
"""Writes one entry that stands for its failure and `suppressed` (the argument) held back before it."""


@dataclass
class _Bucket:
    tokens: float
    at: float
    held: int = 0
    write_held: Write | None = None
    flush: asyncio.TimerHandle | None = None


class FailureAudit:
    """The bounded writer of one process's failure entries (one per app)."""

    def __init__(
        self,
        *,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[tuple[str, ...], _Bucket] = {}
        self._writing: set[asyncio.Task[None]] = set()

    async def record(self, kind: tuple[str, ...], write: Write, write_held: Write) -> None:
        """Write this failure's entry with `write` when its kind's bucket allows, carrying how many of its
        kind were held back; otherwise hold it back, to be written by a later entry or by `write_held`
        (the entry of a held-back failure: no token digest) once the bucket allows. A kind starts with its
        event type."""
        bucket = self._bucket(kind)
        if self._take(bucket):
            suppressed, bucket.held, bucket.write_held = bucket.held, 0, None
            if bucket.flush is not None:
                bucket.flush.cancel()
                bucket.flush = None
            await write(suppressed)
            return
        bucket.held += 1
        bucket.write_held = write_held
        if bucket.flush is None:
            self._schedule(bucket)

    async def aclose(self) -> None:
        """Write what is held back and wait for those entries: before the audit log closes."""
        for bucket in self._buckets.values():
            if bucket.flush is not None:
                bucket.flush.cancel()
                bucket.flush = None
            if bucket.held and bucket.write_held is not None:
                self._write_held(bucket)
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    def _bucket(self, kind: tuple[str, ...]) -> _Bucket:
        bucket = self._buckets.get(kind)
        if bucket is None:
            if len(self._buckets) >= MAX_KINDS:
                kind = (kind[0], OTHER)
                bucket = self._buckets.get(kind)
            if bucket is None:
                bucket = self._buckets[kind] = _Bucket(tokens=float(self._burst), at=self._clock())
        return bucket

    def _take(self, bucket: _Bucket) -> bool:
        now = self._clock()
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False

    def _schedule(self, bucket: _Bucket) -> None:
        wait = max(0.0, (1 - bucket.tokens) / self._rate)
        bucket.flush = asyncio.get_running_loop().call_later(wait, self._flush, bucket)

    def _flush(self, bucket: _Bucket) -> None:
        bucket.flush = None
        if not bucket.held or bucket.write_held is None:
            return
        if not self._take(bucket):
            self._schedule(bucket)
            return
        self._write_held(bucket)

    def _write_held(self, bucket: _Bucket) -> None:
        """Start the entry of the held-back failures: it stands for one of them and counts the others."""
        assert bucket.write_held is not None
        task = asyncio.ensure_future(_logged(bucket.write_held(bucket.held - 1)))
        bucket.held, bucket.write_held = 0, None
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)


def app_failures(state: Any) -> FailureAudit:
    """The bounded writer kept on an app's `state` (made there by the app's lifespan, or on first use)."""
    audit: FailureAudit | None = getattr(state, "failure_audit", None)
    if audit is None:
        audit = state.failure_audit = FailureAudit()
    return audit


def suppressed_field(count: int) -> dict[str, int]:
    """The `suppressed` member of an entry standing for `count` failures besides its own (none for 0)."""
    return {"suppressed": count} if count else {}


async def _logged(entry: Awaitable[None]) -> None:
    """An entry written off any request: a failure is logged (without its message, which may quote what
    was written), never raised into the event loop."""
    try:
        await entry
    except Exception as exc:  # noqa: BLE001 - nobody awaits this entry; the log says it was lost
        log.warning("held-back failures could not be audited (%s)", type(exc).__name__)
