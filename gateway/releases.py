"""The releases waiting for a pool thread, taken together when they queue up.

A released query is counted, run, protected and queued for the audit log in a pool thread
(gateway.pipeline). Each request used to be one task of the pool. Now it waits here, and a pool thread
that becomes free takes every release waiting (up to `MAX_TAKEN`): requests that queued up while the
threads were busy are handled in one pass, and queries of one shape among them share one DuckDB statement
(gateway.query.execute_together). With nothing waiting a release is taken at once, alone, as before.

At most as many passes run at once as the pool has threads, and a pass that leaves releases waiting hands
them to a new task at the back of the pool's queue, so other work on the pool (state reads, steward
requests) is not held up by a steady stream of queries.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Final, Generic, Protocol, TypeVar

MAX_TAKEN: Final = 8
"""The most releases one pass takes: more would hold the first one's answer back for long."""


class Settles(Protocol):
    def fail(self, exc: BaseException) -> None:
        """End the waiting request with `exc` (once; later calls do nothing)."""


J = TypeVar("J", bound=Settles)


class ReleaseQueue(Generic[J]):
    """Releases waiting for a pool thread; `handle` runs in the pool with the releases taken together and
    must end every one of them. One queue serves a site, whichever pipeline object queued the release."""

    def __init__(self) -> None:
        self._waiting: deque[J] = deque()
        self._lock = threading.Lock()
        self._passes = 0  # passes queued on the pool or running

    def submit(self, job: J, handle: Callable[[Sequence[J]], None], pool: Executor, threads: int) -> None:
        """Queue `job`; start a pass on `pool` unless `threads` passes are already under way."""
        with self._lock:
            self._waiting.append(job)
            start = self._passes < threads
            if start:
                self._passes += 1
        if start:
            self._schedule(handle, pool)

    def waiting(self) -> int:
        """Releases queued and not yet taken."""
        with self._lock:
            return len(self._waiting)

    def _schedule(self, handle: Callable[[Sequence[J]], None], pool: Executor) -> None:
        try:
            pool.submit(self._pass, handle, pool)
        except RuntimeError as exc:  # the pool is shut down: nothing waiting will be taken
            with self._lock:
                self._passes -= 1
                stranded = list(self._waiting)
                self._waiting.clear()
            for job in stranded:
                job.fail(exc)

    def _pass(self, handle: Callable[[Sequence[J]], None], pool: Executor) -> None:
        with self._lock:
            taken = [self._waiting.popleft() for _ in range(min(MAX_TAKEN, len(self._waiting)))]
            if not taken:
                self._passes -= 1
                return
        try:
            handle(taken)
        except BaseException as exc:  # noqa: BLE001 - `handle` ends each release; this ends the rest
            for job in taken:
                job.fail(exc)
        finally:
            with self._lock:
                more = bool(self._waiting)
                if not more:
                    self._passes -= 1
            if more:
                self._schedule(handle, pool)
