"""gateway.releases: releases that wait for the pool are taken together with those of their hint, others
go to the next free thread, no more passes run than the pool has threads, and every release ends, even
when the handler fails or the pool is gone. Releases on small tables run one pass at a time, and a long
release never holds them up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.query import ONE_ROW_GROUP
from gateway.releases import MAX_TAKEN, ReleaseLanes, ReleaseQueue
from gateway.runtime import SiteRuntime


class Job:
    def __init__(self, n: int, together: str | None = "shape") -> None:
        self.n = n
        self.together = together
        self.failed: list[BaseException] = []

    def fail(self, exc: BaseException) -> None:
        self.failed.append(exc)


class Recorder:
    """A handler that records each pass's jobs and how many passes ran at once; it can be held."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []
        self.running = 0
        self.most_at_once = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.gate.wait(10)
        time.sleep(0.005)
        with self._lock:
            self.passes.append([job.n for job in jobs])
            self.running -= 1


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_releases_that_wait_are_taken_together_in_order() -> None:
    queue: ReleaseQueue[Job] = ReleaseQueue()
    handle = Recorder()
    handle.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        jobs = [Job(n) for n in range(2 + 2 * MAX_TAKEN + 3)]
        # The first two are taken alone at once; the rest wait while both passes are held.
        for n in (0, 1):
            queue.submit(jobs[n], handle, pool, 2)
            wait_until(lambda n=n: handle.running == n + 1)
        for job in jobs[2:]:
            queue.submit(job, handle, pool, 2)
        assert queue.waiting() == len(jobs) - 2
        handle.gate.set()
        wait_until(lambda: sum(map(len, handle.passes)) == len(jobs))
    taken = [n for one_pass in handle.passes for n in one_pass]
    assert sorted(taken) == list(range(len(jobs)))
    assert max(map(len, handle.passes)) == MAX_TAKEN  # never more than MAX_TAKEN in a pass
    assert handle.most_at_once == 2  # never more passes than threads
    assert all(one_pass == sorted(one_pass) for one_pass in handle.passes)  # in the order they came
    assert not any(job.failed for job in jobs)


def test_a_release_alone_is_taken_at_once() -> None:
    queue: ReleaseQueue[Job] = ReleaseQueue()
    handle = Recorder()
    with ThreadPoolExecutor(2) as pool:
        for n in range(3):
            queue.submit(Job(n), handle, pool, 2)
            wait_until(lambda n=n: len(handle.passes) == n + 1)
    assert handle.passes == [[0], [1], [2]]
    assert queue.waiting() == 0


def test_a_failing_handler_ends_every_release_it_took() -> None:
    queue: ReleaseQueue[Job] = ReleaseQueue()
    boom = RuntimeError("handler failed")

    def failing(jobs: Sequence[Job]) -> None:
        raise boom

    jobs = [Job(n) for n in range(3)]
    with ThreadPoolExecutor(1) as pool:
        for job in jobs:
            queue.submit(job, failing, pool, 1)
        wait_until(lambda: all(job.failed for job in jobs))
    assert all(job.failed == [boom] for job in jobs)


def test_releases_waiting_when_the_pool_is_gone_end_with_its_error() -> None:
    queue: ReleaseQueue[Job] = ReleaseQueue()
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    job = Job(0)
    queue.submit(job, Recorder(), pool, 1)
    assert len(job.failed) == 1 and isinstance(job.failed[0], RuntimeError)
    assert queue.waiting() == 0
    # The queue is usable again with a live pool.
    handle = Recorder()
    with ThreadPoolExecutor(1) as live:
        queue.submit(Job(1), handle, live, 1)
        wait_until(lambda: handle.passes == [[1]])


@pytest.mark.parametrize("threads", [1, 3])
def test_no_more_passes_than_threads(threads: int) -> None:
    queue: ReleaseQueue[Job] = ReleaseQueue()
    handle = Recorder()
    handle.gate.clear()
    with ThreadPoolExecutor(threads + 2) as pool:  # a pool with threads to spare does not change it
        for n in range(threads):
            queue.submit(Job(n), handle, pool, threads)
            wait_until(lambda n=n: handle.running == n + 1)
        for n in range(threads, threads * 4):
            queue.submit(Job(n), handle, pool, threads)
        time.sleep(0.05)
        assert handle.running == threads
        handle.gate.set()
        wait_until(lambda: sum(map(len, handle.passes)) == threads * 4)
    assert handle.most_at_once == threads


def test_a_pass_takes_only_releases_of_its_hint_and_leaves_the_rest_to_the_next() -> None:
    queue: ReleaseQueue[Job] = ReleaseQueue()
    handle = Recorder()
    handle.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        for n, hint in enumerate(["a", "z"]):
            queue.submit(Job(n, hint), handle, pool, 2)
            wait_until(lambda n=n: handle.running == n + 1)
        # Both passes are held while these queue. Each pass after them takes the first release waiting
        # and the others of its hint, never one of another hint or of none.
        hints = ["b", "c", "b", None, "c", "b", None]
        for n, hint in enumerate(hints, start=2):
            queue.submit(Job(n, hint), handle, pool, 2)
        handle.gate.set()
        wait_until(lambda: sum(map(len, handle.passes)) == len(hints) + 2)
    assert sorted(map(sorted, handle.passes)) == [[0], [1], [2, 4, 7], [3, 6], [5], [8]]
    assert handle.most_at_once == 2


def test_short_releases_run_one_pass_at_a_time_however_many_threads() -> None:
    lanes: ReleaseLanes[Job] = ReleaseLanes()
    handle = Recorder()
    handle.gate.clear()
    jobs = [Job(n, together=None) for n in range(6)]  # each taken alone
    with ThreadPoolExecutor(4) as pool:
        for job in jobs:
            lanes.submit(job, handle, pool, 4, short=True)
        wait_until(lambda: handle.running == 1)
        time.sleep(0.05)  # a second pass, were one started, would be running by now
        assert handle.running == 1 and lanes.waiting() == len(jobs) - 1
        handle.gate.set()
        wait_until(lambda: len(handle.passes) == len(jobs))
    assert handle.most_at_once == 1
    assert [n for one_pass in handle.passes for n in one_pass] == list(range(len(jobs)))
    assert not any(job.failed for job in jobs)


def test_long_releases_leave_a_thread_to_the_short_ones() -> None:
    lanes: ReleaseLanes[Job] = ReleaseLanes()
    long_handle, short_handle = Recorder(), Recorder()
    long_handle.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        for n in range(5):
            lanes.submit(Job(n, together=None), long_handle, pool, 4, short=False)
        wait_until(lambda: long_handle.running == 3)  # every thread but one
        time.sleep(0.05)
        assert long_handle.running == 3 and lanes.waiting() == 2
        # Three long passes hold their threads: a short release is still taken at once.
        lanes.submit(Job(10), short_handle, pool, 4, short=True)
        wait_until(lambda: short_handle.passes == [[10]])
        assert long_handle.running == 3
        long_handle.gate.set()
        wait_until(lambda: len(long_handle.passes) == 5)
    assert long_handle.most_at_once == 3


def test_with_one_thread_both_lanes_take_turns_and_every_release_ends() -> None:
    lanes: ReleaseLanes[Job] = ReleaseLanes()
    handle = Recorder()
    jobs = [Job(n, together=None) for n in range(6)]
    with ThreadPoolExecutor(1) as pool:
        for job in jobs:
            lanes.submit(job, handle, pool, 1, short=job.n % 2 == 0)
        wait_until(lambda: len(handle.passes) == len(jobs))
    assert sorted(n for one_pass in handle.passes for n in one_pass) == list(range(len(jobs)))
    assert handle.most_at_once == 1 and lanes.waiting() == 0


def test_a_dataset_version_is_short_up_to_one_row_group() -> None:
    def version(rows: int) -> Any:
        return SimpleNamespace(row_count=rows)

    assert SiteRuntime.is_small(version(1)) and SiteRuntime.is_small(version(ONE_ROW_GROUP))
    assert not SiteRuntime.is_small(version(ONE_ROW_GROUP + 1))
