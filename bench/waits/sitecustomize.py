"""Timing hooks for bench/query_waits.py, loaded into the gateway's worker processes and nowhere else.

bench/query_waits.py starts `fedgate serve` with this folder first on PYTHONPATH and FEDGATE_BENCH_WAITS
naming a folder: Python imports `sitecustomize` at start-up, and in a worker (the process that imports
`gateway.cli.workers` for `worker_main`) this module wraps the functions a query passes through to note
when it reached each one. Each answered query appends one JSON line to `<folder>/<pid>.jsonl` (one write
system call each, a few microseconds):

    ["q", t_received, t_decided, t_pass_start, t_queued, t_committed, t_on_loop, t_answered, run_ms, taken]

(perf_counter seconds; `taken` is how many releases the pass took; a query refused, or one a hook missed,
["partial", t_received, [the steps not seen]]), and each hold of the audit log's
writers' lock one line ["lock", waited_s, held_s]. Without FEDGATE_BENCH_WAITS it does nothing.
"""

from __future__ import annotations

import builtins
import os
from typing import Any

_FOLDER = os.environ.get("FEDGATE_BENCH_WAITS")


def _install() -> None:
    import contextlib
    import gc
    import json
    import time
    from collections.abc import Iterator
    from pathlib import Path

    import audit.log as audit_log
    import audit.storage as storage
    import gateway.pipeline as pipeline
    import gateway.state as state

    clock = time.perf_counter
    # One write per record, unbuffered: uvicorn ends a worker stopped by a signal with that signal again
    # once it has shut down, so no exit handler would write what a buffer held.
    out = os.open(Path(str(_FOLDER)) / f"{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    marks: dict[str, dict[str, float]] = {}

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
    lead = audit_log.AuditLog._lead
    queued = audit_log.AuditLog._queued

    async def timed_submit(self: Any, principal: Any, spec: Any, request_id: str) -> Any:
        mark = marks[request_id] = {"received": clock()}
        try:
            return await submit(self, principal, spec, request_id)
        finally:
            mark["answered"] = clock()
            del marks[request_id]
            steps = ("received", "decided", "pass", "queued", "committed", "on_loop", "answered")
            if all(step in mark for step in steps):
                keep(["q", *(mark[step] for step in steps), mark["run_ms"], int(mark["taken"])])
            else:  # refused, or a step the hooks did not see
                keep(["partial", mark["received"], [step for step in steps if step not in mark]])

    async def timed_decide(
        self: Any, principal: Any, spec: Any, entry: Any, request_id: str, *a: Any, **k: Any
    ) -> Any:
        try:
            return await decide(self, principal, spec, entry, request_id, *a, **k)
        finally:
            if request_id in marks:
                marks[request_id]["decided"] = clock()

    def timed_release_together(jobs: Any) -> None:
        now = clock()
        for job in jobs:
            if job.request_id in marks:
                marks[job.request_id].update({"pass": now, "taken": len(jobs)})
        release_together(jobs)

    def timed_protect_and_queue(self: Any, job: Any, outcome: Any, duration_ms: float) -> Any:
        try:
            return protect_and_queue(self, job, outcome, duration_ms)
        finally:
            if job.request_id in marks:
                marks[job.request_id].update({"queued": clock(), "run_ms": duration_ms})

    def timed_committed(job: Any, body: Any, done: Any) -> None:
        if job.request_id in marks:
            marks[job.request_id]["committed"] = clock()
        committed(job, body, done)

    def timed_settle(answer: Any, value: Any, exc: BaseException | None) -> None:
        if isinstance(value, dict) and value.get("request_id") in marks:
            marks[value["request_id"]]["on_loop"] = clock()
        settle(answer, value, exc)

    @contextlib.contextmanager
    def timed_exclusive(self: Any) -> Iterator[None]:
        asked = clock()
        with exclusive(self):
            got = clock()
            try:
                yield
            finally:
                keep(["lock", asked, got - asked, clock() - got])

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
    awaited: dict[int, float] = {}  # per log: when the oldest entry someone waits on was queued

    def timed_queued(self: Any, *args: Any, **kwargs: Any) -> Any:
        pending = queued(self, *args, **kwargs)
        if pending.future is not None:
            awaited.setdefault(id(self), clock())
        return pending

    def timed_lead(self: Any) -> None:
        started = clock()
        since = awaited.pop(id(self), started)
        entries = len(self._queue.items)
        try:
            lead(self)
        finally:
            keep(["commit", started, started - since, clock() - started, entries])

    pipeline.QueryPipeline.submit = timed_submit  # type: ignore[method-assign]
    pipeline.QueryPipeline._decide = timed_decide  # type: ignore[method-assign]
    pipeline._release_together = timed_release_together
    pipeline.QueryPipeline._protect_and_queue = timed_protect_and_queue  # type: ignore[method-assign]
    pipeline._committed = timed_committed
    pipeline._settle = timed_settle
    storage.Engines.exclusive = timed_exclusive  # type: ignore[method-assign]
    state.GatewayState.start_query = timed_start_query  # type: ignore[method-assign]
    audit_log.AuditLog._queued = timed_queued  # type: ignore[method-assign]
    audit_log.AuditLog._lead = timed_lead  # type: ignore[method-assign]


if _FOLDER:
    _import = builtins.__import__

    def _watch(name: str, *args: Any, **kwargs: Any) -> Any:
        module = _import(name, *args, **kwargs)
        fromlist = args[2] if len(args) > 2 else kwargs.get("fromlist")
        if name == "gateway.cli.workers" and fromlist and "worker_main" in fromlist:
            builtins.__import__ = _import  # once, in a worker, with the gateway's modules importable
            _install()
        return module

    builtins.__import__ = _watch
