"""The releases waiting for a pool thread, taken together when they queue up.

A released query is counted, run, protected and queued for the audit log in a pool thread
(gateway.pipeline). Each request used to be one task of the pool. Now it waits here, and a pool thread
that becomes free takes the first release waiting together with the others waiting that may share its
statement (the same `together` hint; up to `MAX_TAKEN` in all): requests that queued up while the threads
were busy are handled in one pass, and queries of one shape among them share one DuckDB statement
(gateway.query.execute_together). A release with no hint, or none like it waiting, is taken alone, and
what a pass leaves waiting goes to the next pass, so unrelated queries still run side by side on the
pool's threads. With nothing waiting a release is taken at once, alone, as before.

At most as many passes run at once as the pool has threads, and a pass that leaves releases waiting hands
them to a new task at the back of the pool's queue, so other work on the pool (state reads, steward
requests) is not held up by a steady stream of queries.

`ReleaseLanes` keeps two queues: releases on small tables (one DuckDB row group), which take a few
milliseconds, run one pass at a time, and the others share the rest of the pool's threads. Short queries
alone then wait less than with two passes taking turns on the worker's GIL (docs/queries.md, "Running a
site for throughput"), and a long query never holds them up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Final, Generic, Protocol, TypeVar

MAX_TAKEN: Final = 4
"""The most releases one pass takes. Eight would save DuckDB about 65 µs more per query, but a pass then
holds its first answer back longer: served at 400 requests/s, the p50 was 24-54 ms against 10-28 ms with
four."""


class Settles(Protocol):
    @property
    def together(self) -> Hashable | None:
        """Releases with one hint may share a statement and are taken in one pass; None: taken alone."""

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

    def _take(self) -> list[J]:
        """The first release waiting and the others with its hint, in order (under the lock)."""
        first = self._waiting.popleft()
        taken = [first]
        if first.together is None:
            return taken
        left: deque[J] = deque()
        while self._waiting and len(taken) < MAX_TAKEN:
            job = self._waiting.popleft()
            (taken if job.together == first.together else left).append(job)
        left.extend(self._waiting)
        self._waiting = left
        return taken

    def _pass(self, handle: Callable[[Sequence[J]], None], pool: Executor) -> None:
        # What a pass leaves waiting is taken by the next pass: a new one starts as soon as a release comes
        # and a thread is free, and a pass that ends with releases waiting queues the next.
        with self._lock:
            if not self._waiting:
                self._passes -= 1
                return
            taken = self._take()
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


class ReleaseLanes(Generic[J]):
    """Releases on small tables run one pass at a time; the others use the pool's other threads (all of
    them with a pool of one thread, where the two lanes take turns)."""

    def __init__(self) -> None:
        self.short: ReleaseQueue[J] = ReleaseQueue()
        self.long: ReleaseQueue[J] = ReleaseQueue()

    def submit(
        self, job: J, handle: Callable[[Sequence[J]], None], pool: Executor, threads: int, *, short: bool
    ) -> None:
        """Queue `job` in its lane (`short`: a release on a small table)."""
        if short:
            self.short.submit(job, handle, pool, 1)
        else:
            self.long.submit(job, handle, pool, max(1, threads - 1))

    def waiting(self) -> int:
        """Releases queued in either lane and not yet taken."""
        return self.short.waiting() + self.long.waiting()
