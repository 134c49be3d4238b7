"""Where a small query's CPU goes inside a gateway: each step's CPU time per request, timed in place.

    python bench/query_steps.py [--requests N] [--rounds R] [--warmup W]

Builds bench/query.py's site, starts the gateway's app in this process and sends it bench/query.py's small
query (a count by one column on 20,000 rows) over ASGI, one request at a time: no socket and no
concurrency, so every figure is the CPU time (`time.thread_time`) of the thread that ran the step. Steps
are timed by wrapping the functions the pipeline calls, per request:

- `framework`: FastAPI and Starlette with the token check, the body's validation and the response: the
  event loop's CPU for a request whose pipeline answers at once;
- `event_loop`, `pool_thread`: the CPU of a real request in the event loop and in the pool thread that
  counts, runs, protects and queues its answer (`gateway.pipeline._release_together`);
- `decision` (the policy decision point), `store_run` (DuckDB's run with the connection's checkout and
  the rows made an outcome), `disclosure` (`protect`), `query_count` (the identical-query count and the
  withdrawals), `compile`, `audit_entries` (the request's audit entries prepared and queued) and
  `canonical_json` (RFC 8785, every caller, the audit entries' included): parts of the two above.

The audit committer's thread is not timed. Each step's share of a loaded gateway is larger than here:
under load each one runs after the others have taken the caches (docs/queries.md, "Performance").
Prints each round's figures in µs, then, as the last line, a JSON object of their medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import rfc8785

# bench/audit.py would shadow the `audit` package for a script run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]


def _bench_query() -> Any:
    """bench/query.py, for its site and its small query."""
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench/query.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StepTimer:
    """CPU seconds spent in wrapped callables, by step, in whichever thread called them."""

    def __init__(self) -> None:
        self.spent: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def wrapping(self, owner: Any, name: str, step: str) -> Iterator[None]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[step] += time.thread_time() - started

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def _asgi_request(app: Any, token: str, payload: bytes) -> Callable[[], Any]:
    """A coroutine function that sends one `POST /v1/queries` to `app`, checks it was answered and returns
    the answer's body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/queries", "raw_path": b"/v1/queries", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode()),
                    (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
    }  # fmt: skip

    async def request() -> bytes:
        sent = False
        statuses: list[int] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:  # the app asks again only to watch for a disconnect
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app({**scope, "state": {}}, receive, send)
        if statuses != [200]:
            raise SystemExit(f"the gateway answered {statuses} instead of 200")
        return b"".join(chunks)

    return request


async def _measure(
    app: Any, tokens: list[str], requests: int, rounds: int, warmup: int, body: Any
) -> list[dict[str, float]]:
    from gateway import pipeline as pipeline_module
    from gateway.decision.point import PolicyDecisionPoint
    from gateway.pipeline import Answer
    from gateway.runtime import SiteRuntime
    from gateway.state import GatewayState

    counter = 0

    def next_request() -> Callable[[], Any]:
        nonlocal counter
        counter += 1
        # A different threshold each time, as in bench/query.py: identical queries are limited.
        payload = json.dumps(body("small", 20 + counter / 1e6, ["sex"])).encode()
        return _asgi_request(app, tokens[counter % len(tokens)], payload)

    answered = b""

    async def loop_cpu(n: int) -> float:
        nonlocal answered
        spent = 0.0
        for _ in range(n):
            request = next_request()
            started = time.thread_time()
            answered = await request()
            spent += time.thread_time() - started
        return spent

    timer = StepTimer()
    steps = [
        (pipeline_module, "_release_together", "pool_thread"),
        (PolicyDecisionPoint, "evaluate", "decision"),
        (pipeline_module, "execute_together", "store_run"),
        (pipeline_module, "protect", "disclosure"),
        (GatewayState, "start_query", "query_count"),
        (pipeline_module, "compile_query", "compile"),
        (SiteRuntime, "_written", "audit_entries"),
        (rfc8785, "dumps", "canonical_json"),
    ]
    figures = []
    await loop_cpu(warmup)
    for _ in range(rounds):
        timer.spent.clear()
        with contextlib.ExitStack() as wrapped:
            for owner, name, step in steps:
                wrapped.enter_context(timer.wrapping(owner, name, step))
            event_loop = await loop_cpu(requests)
        with _stubbed_pipeline(app, Answer("released", json.loads(answered))):
            framework = await loop_cpu(requests)
        round_figures = {"framework": framework, "event_loop": event_loop, **timer.spent}
        round_figures = {step: round(spent / requests * 1e6, 1) for step, spent in round_figures.items()}
        line = " ".join(f"{step} {us:.0f}" for step, us in round_figures.items())
        print(line, "(µs per request)", flush=True)
        figures.append(round_figures)
    return figures


@contextlib.contextmanager
def _stubbed_pipeline(app: Any, answer: Any) -> Iterator[None]:
    """The app's pipeline replaced by one that gives `answer` (a real one) at once: what is left of a
    request is the framework's share."""

    class Answering:
        async def submit(self, *_: Any) -> Any:
            return answer

    app.state.pipeline_factory = lambda _request, _runtime: Answering()
    try:
        yield
    finally:
        app.state.pipeline_factory = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200, help="requests before the first round")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--requests and --rounds must be at least 1, --warmup at least 0")
    bench = _bench_query()
    from gateway.auth.local_idp import UnsafeLocalIdentityProvider

    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-steps-"))
    try:
        with UnsafeLocalIdentityProvider(audience=bench.AUDIENCE) as idp:
            config = bench.build_site(work, 100_000, idp.issuer_url, bench.free_port())
            tokens = [
                idp.token(sub=f"bench-{i}", org="org-aphp", country="FR", roles=["researcher"], ttl_s=3600)
                for i in range(64)
            ]
            figures = bench.run_load(_serve_and_measure(config, tokens, args, bench.body))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # `tune_process` froze the app's start-up objects out of the collector: collect them now, so that
    # DuckDB's bindings do not report its objects as leaked when the interpreter exits.
    gc.unfreeze()
    gc.collect()
    steps = list(dict.fromkeys(step for round_figures in figures for step in round_figures))
    medians = {step: round(statistics.median(f.get(step, 0.0) for f in figures), 1) for step in steps}
    print(json.dumps(medians))


async def _serve_and_measure(
    config: Path, tokens: list[str], args: argparse.Namespace, body: Any
) -> list[dict[str, float]]:
    """The site's app started in this process as `fedgate serve` starts it, measured, and stopped."""
    from gateway.app import create_app
    from gateway.settings import load_settings

    app = create_app(load_settings(config), tune_process=True)
    async with app.router.lifespan_context(app):
        return await _measure(app, tokens, args.requests, args.rounds, args.warmup, body)


if __name__ == "__main__":
    main()
