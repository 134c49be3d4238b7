"""The load of bench/query.py: its clients count only answered requests, and count every failure.

Its figures decide whether the gateway meets its targets, so a client that counted an error status, a
dropped connection or a refused one as an answer would overstate them."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_site import free_port, serving

ROOT = Path(__file__).resolve().parents[2]


def _bench_query() -> Any:
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench/query.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_query()


class Recorder:
    """An ASGI app that answers by the request's threshold: above 100 a 500, above 50 a 200 that closes the
    connection, 42 a 200 after a second, 7 a 202 (left for a steward), else a 200 at once; it keeps what
    it was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        payload = json.loads(body)
        self.requests.append({"path": scope["path"], "auth": headers[b"authorization"], "body": payload})
        threshold = payload["filters"]["value"]
        if threshold == 42:
            await asyncio.sleep(1)
        status = 500 if threshold > 100 else 202 if threshold == 7 else 200
        extra = [(b"connection", b"close")] if 50 < threshold <= 100 else []
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    app = Recorder()
    with serving(app) as url:
        yield app, url


@pytest.fixture(autouse=True)
def no_failures_yet() -> Iterator[None]:
    bench.FAILED.clear()
    yield
    bench.FAILED.clear()


def _ask(url: str, *thresholds: float) -> list[bool]:
    """Send small queries one after another from one load client; whether each was answered."""

    async def run() -> list[bool]:
        client = bench.LoadClient(url, "token-1")
        try:
            return [await client.small_query(t) for t in thresholds]
        finally:
            client.close()

    return asyncio.run(run())


def test_an_answered_query_counts_and_sends_the_small_query_with_the_clients_token(
    recorder: tuple[Recorder, str],
) -> None:
    app, url = recorder
    assert _ask(url, 1.5, 2.5) == [True, True]
    assert bench.FAILED == []
    assert [r["body"] for r in app.requests] == [
        bench.body("small", 1.5, ["sex"]),
        bench.body("small", 2.5, ["sex"]),
    ]
    assert {r["path"] for r in app.requests} == {"/v1/queries"}
    assert {r["auth"] for r in app.requests} == {b"Bearer token-1"}


def test_an_error_status_is_a_failure_and_the_connection_goes_on(recorder: tuple[Recorder, str]) -> None:
    app, url = recorder
    assert _ask(url, 150, 1) == [False, True]
    assert bench.FAILED == ["HTTP 500"]
    assert len(app.requests) == 2


def test_an_answer_without_a_result_is_a_failure(recorder: tuple[Recorder, str]) -> None:
    _, url = recorder
    assert _ask(url, 7, 1) == [False, True]
    assert bench.FAILED == ["HTTP 202"]


def test_a_connection_the_server_closes_is_opened_again_for_the_next_query(
    recorder: tuple[Recorder, str],
) -> None:
    app, url = recorder
    assert _ask(url, 75, 1, 75) == [True, True, True]
    assert bench.FAILED == []
    assert len(app.requests) == 3


def test_a_refused_connection_is_a_failure_not_an_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert _ask(url, 1) == [False]
    assert bench.FAILED == ["ConnectionRefusedError"]


def test_the_closed_loop_counts_only_answers(recorder: tuple[Recorder, str]) -> None:
    app, url = recorder
    rps, latencies = asyncio.run(bench.closed_loop(url, ["a", "b"], 0.3, 4))
    assert len(latencies) == len(app.requests) > 0
    assert rps > 0
    assert bench.FAILED == []
    assert {r["auth"] for r in app.requests} == {b"Bearer a", b"Bearer b"}


def test_a_query_unanswered_within_the_timeout_is_a_failure(
    recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = recorder
    monkeypatch.setattr(bench, "TIMEOUT_S", 0.2)
    assert _ask(url, 42, 1) == [False, True]
    assert bench.FAILED == ["TimeoutError"]
