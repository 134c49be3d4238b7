"""Timing hooks for bench/query_waits.py, installed in the gateway's worker processes.

bench/query_waits.py starts `fedgate serve` with this folder first on PYTHONPATH and FEDGATE_BENCH_WAITS
naming a folder. Python imports `sitecustomize` at start-up in every process started so (this module then
takes the place of any other `sitecustomize`); without FEDGATE_BENCH_WAITS it does nothing. With it, it
watches imports until the process imports `gateway.cli.workers` for `worker_main`, which only a worker of a
multi-worker `fedgate serve` does, and there wraps the functions a query passes through to note when it
reached each one. A worker writes one JSON line per record to `<folder>/<pid>.jsonl`, each with one write
system call (a few microseconds), as it is made: uvicorn ends a worker stopped by a signal with that signal
again once it has shut down, so no exit handler would write what a buffer held. Times are perf_counter
seconds, the machine's one monotonic clock; the second item of every record is when it began:

    ["q", t_received, t_decided, t_pass_start, t_queued, t_committed, t_on_loop, t_answered, run_ms, taken]
        an answered query (`taken`: how many releases its pool pass took);
    ["partial", t_received, [steps not seen]]
        a query refused, or one a hook missed;
    ["commit", t_started, waited_s, took_s, entries, lock_waited_s, lock_held_s]
        a commit of the audit log: how long the oldest entry awaited in it had been queued when it started,
        how long it took (the writers' lock and the transaction), how many entries it wrote, and its wait
        for the writers' lock and its hold of it;
    ["count", t_started, took_s]
        a query's count against its agreement's limit in the state database;
    ["gc", t_started, took_s, generation]
        a garbage collection.
"""

from __future__ import annotations

import builtins
import os
from typing import Any

_FOLDER = os.environ.get("FEDGATE_BENCH_WAITS")


def _install(folder: str) -> None:
    import contextlib
    import gc
    import json
    import threading
    import time
    from collections.abc import Iterator
    from pathlib import Path

    import audit.log as audit_log
    import audit.storage as storage
    import gateway.pipeline as pipeline
    import gateway.state as state

    clock = time.perf_counter
    out = os.open(Path(folder) / f"{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def keep(record: list[Any]) -> None:
        os.write(out, (json.dumps(record) + "\n").encode())

    submit = pipeline.QueryPipeline.submit
    decide = pipeline.QueryPipeline._decide
    release_together = pipeline._release_together
    protect_and_queue = pipeline.QueryPipeline._protect_and_queue
    committed = pipeline._committed
    settle = pipeline._settle
    exclusive = storage.Engines.exclusive
    start_query = state.GatewayState.start_query
    queued = audit_log.AuditLog._queued
    commit = audit_log.AuditLog._commit

    # Each query's marks, by request id. The event loop adds and removes a query's entry; other threads
    # only write into an entry they find (a cancelled request may already have removed it).
    marks: dict[str, dict[str, float]] = {}
    steps = ("received", "decided", "pass", "queued", "committed", "on_loop", "answered")

    def mark(request_id: str, **at: float) -> None:
        found = marks.get(request_id)
        if found is not None:
            found.update(at)

    async def timed_submit(self: Any, principal: Any, spec: Any, request_id: str) -> Any:
        own = marks[request_id] = {"received": clock()}
        try:
            return await submit(self, principal, spec, request_id)
        finally:
            own["answered"] = clock()
            marks.pop(request_id, None)
            if all(step in own for step in steps):
                keep(["q", *(own[step] for step in steps), own["run_ms"], int(own["taken"])])
            else:
                keep(["partial", own["received"], [step for step in steps if step not in own]])

    async def timed_decide(
        self: Any, principal: Any, spec: Any, entry: Any, request_id: str, *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return await decide(self, principal, spec, entry, request_id, *args, **kwargs)
        finally:
            mark(request_id, decided=clock())

    def timed_release_together(jobs: Any) -> None:
        now = clock()
        for job in jobs:
            mark(job.request_id, taken=len(jobs), **{"pass": now})
        release_together(jobs)

    def timed_protect_and_queue(self: Any, job: Any, outcome: Any, duration_ms: float) -> Any:
        try:
            return protect_and_queue(self, job, outcome, duration_ms)
        finally:
            mark(job.request_id, queued=clock(), run_ms=duration_ms)

    def timed_committed(job: Any, body: Any, done: Any) -> None:
        mark(job.request_id, committed=clock())
        committed(job, body, done)

    def timed_settle(answer: Any, value: Any, exc: BaseException | None) -> None:
        if isinstance(value, dict) and isinstance(value.get("request_id"), str):
            mark(value["request_id"], on_loop=clock())
        settle(answer, value, exc)

    # The writers' lock as a commit takes it (checkpoints take it too, and are not timed).
    in_commit = threading.local()

    @contextlib.contextmanager
    def timed_exclusive(self: Any) -> Iterator[None]:
        asked = clock()
        with exclusive(self):
            got = clock()
            try:
                yield
            finally:
                if getattr(in_commit, "lock", None) is not None:
                    in_commit.lock = (got - asked, clock() - got)

    awaited: dict[int, float] = {}  # when each entry someone waits on was queued, by id of its _Pending

    def timed_queued(self: Any, *args: Any, **kwargs: Any) -> Any:
        queued_at = clock()
        pending = queued(self, *args, **kwargs)
        if pending.future is not None:
            awaited[id(pending)] = queued_at
        return pending

    def timed_commit(self: Any, batch: Any) -> None:
        started = clock()
        stamps = [awaited.pop(id(p)) for p in batch if id(p) in awaited]
        in_commit.lock = (0.0, 0.0)
        try:
            commit(self, batch)
        finally:
            lock_waited, lock_held = in_commit.lock
            in_commit.lock = None
            since = min(stamps, default=started)
            keep(["commit", started, started - since, clock() - started, len(batch), lock_waited, lock_held])

    def timed_start_query(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return start_query(self, *args, **kwargs)
        finally:
            keep(["count", started, clock() - started])

    collecting: dict[str, float] = {}

    def timed_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting["started"] = clock()
        elif "started" in collecting:
            started = collecting.pop("started")
            keep(["gc", started, clock() - started, info["generation"]])

    gc.callbacks.append(timed_collection)
    pipeline.QueryPipeline.submit = timed_submit  # type: ignore[method-assign]
    pipeline.QueryPipeline._decide = timed_decide  # type: ignore[method-assign]
    pipeline._release_together = timed_release_together
    pipeline.QueryPipeline._protect_and_queue = timed_protect_and_queue  # type: ignore[method-assign]
    pipeline._committed = timed_committed
    pipeline._settle = timed_settle
    storage.Engines.exclusive = timed_exclusive  # type: ignore[method-assign]
    state.GatewayState.start_query = timed_start_query  # type: ignore[method-assign]
    audit_log.AuditLog._queued = timed_queued  # type: ignore[method-assign]
    audit_log.AuditLog._commit = timed_commit  # type: ignore[method-assign]


if _FOLDER:
    _import = builtins.__import__

    def _watch(name: str, *args: Any, **kwargs: Any) -> Any:
        module = _import(name, *args, **kwargs)
        fromlist = args[2] if len(args) > 2 else kwargs.get("fromlist")
        if name == "gateway.cli.workers" and fromlist and "worker_main" in fromlist:
            builtins.__import__ = _import  # once, in a worker, with the gateway's modules importable
            _install(str(_FOLDER))
        return module

    builtins.__import__ = _watch
