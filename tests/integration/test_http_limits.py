"""`fedgate serve` bounds what a request may cost before it is complete: its head's size, the time it takes
to arrive, and the connections a worker serves at once (`[server]`, gateway/cli/http_limits.py).

Over real sockets against the real command, with two workers and a short request timeout.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress

import httpx
import pytest
from gateway_site import Site, bearer
from oidc_issuer import LoopbackTestIssuer
from test_serve_workers import QUERY, _served

from gateway.auth.bearer import MAX_TOKEN_BYTES
from gateway.settings import ConfigError, ServerSettings, load_settings

TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
KEEP_ALIVE_S = 5.0  # uvicorn's timeout_keep_alive: what closes a connection on which no request is under way
BOUNDS = {
    "FEDGATE_SERVER__REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    "FEDGATE_SERVER__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}


@pytest.fixture(scope="module")
def gateway(site: Site) -> Iterator[tuple[str, int]]:
    """The site served by `fedgate serve` with two workers: its URL and port."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in BOUNDS.items():
            env.setenv(name, value)
        with _served(site, workers=2) as (_, url):
            for _ in range(2):  # one connection to each worker: both have started, and so time no start-up
                assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
            yield url, int(url.rsplit(":", 1)[1])


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_to_close(conn: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def _query_request(token: str, extra_headers: bytes = b"") -> bytes:
    body = json.dumps(QUERY).encode()
    return (
        b"POST /v1/queries HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + extra_headers
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def test_a_head_past_the_cap_is_refused_at_once_and_a_large_one_within_it_is_answered(
    gateway: tuple[str, int], idp: LoopbackTestIssuer
) -> None:
    _, port = gateway
    cap = ServerSettings().max_header_bytes
    with _connect(port) as conn:
        started = time.monotonic()
        # A header that never ends, as a client flooding the server would send it: 1 MiB of it.
        conn.sendall(b"POST /v1/queries HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ")
        conn.sendall(b"A" * (1 << 20))
        answer = _read_to_close(conn)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["detail"] == f"the request line and headers may hold at most {cap} bytes"
    assert took < 0.8, f"the refusal and the close took {took:.2f} s"

    # A head just within the cap, with its body in the same packet, is served as any other.
    token = bearer(idp, "researcher")["Authorization"].removeprefix("Bearer ")
    request = _query_request(token)
    padding = b"X-Padding: " + b"p" * (cap - len(request.split(b"\r\n\r\n")[0]) - 20) + b"\r\n"
    with _connect(port) as conn:
        conn.sendall(_query_request(token, padding))
        answer = _read_to_close(conn)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == "released"


def test_requests_that_stop_halfway_are_answered_408_and_closed_after_the_timeout(
    gateway: tuple[str, int], idp: LoopbackTestIssuer
) -> None:
    url, port = gateway
    halfway = {
        "request line": b"POST /v1/quer",
        "headers": b"POST /v1/queries HTTP/1.1\r\nHost: gateway\r\n",
        "body": b'POST /v1/queries HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{"a":',
        "trickled headers": b"POST /v1/queries HTTP/1.1\r\n",  # then a byte every 0.2 s, never the end
        "nothing": b"",
    }
    conns = {name: _connect(port) for name in halfway}
    started = time.monotonic()
    # Meanwhile a keep-alive client is served, idle past the request timeout, and served again.
    served: list[int] = []
    keep_alive = threading.Thread(target=_query_twice, args=(url, bearer(idp, "researcher"), served))
    keep_alive.start()
    closed: dict[str, tuple[float, bytes]] = {}
    with selectors.DefaultSelector() as selector:
        for name, conn in conns.items():
            conn.sendall(halfway[name])
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ, name)
        received = dict.fromkeys(halfway, b"")
        while len(closed) < len(conns) and time.monotonic() - started < KEEP_ALIVE_S + 5:
            if "trickled headers" not in closed:
                with suppress(OSError):
                    conns["trickled headers"].send(b"X")
            for key, _ in selector.select(timeout=0.2):
                name = key.data
                try:
                    chunk = conns[name].recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[name] += chunk
                if not chunk:
                    closed[name] = (time.monotonic() - started, received[name])
                    selector.unregister(conns[name])
    keep_alive.join(timeout=60)
    for conn in conns.values():
        conn.close()
    assert served == [200, 200]
    assert sorted(closed) == sorted(halfway), f"still open: {sorted(set(halfway) - set(closed))}"
    for name in halfway.keys() - {"nothing"}:
        after, answer = closed[name]
        assert answer.startswith(b"HTTP/1.1 408 "), (name, answer[:200])
        assert TIMEOUT_S * 0.9 <= after < TIMEOUT_S + 1.5, (name, after)
    # A connection that never began a request is idle, and closed as an idle keep-alive one is: silently.
    after, answer = closed["nothing"]
    assert answer == b"" and KEEP_ALIVE_S * 0.9 <= after < KEEP_ALIVE_S + 2, after


def _query_twice(url: str, headers: dict[str, str], statuses: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        statuses.append(client.post("/v1/queries", json=QUERY, headers=headers).status_code)
        time.sleep(TIMEOUT_S * 1.5)
        statuses.append(client.post("/v1/queries", json=QUERY, headers=headers).status_code)


def test_a_worker_answers_503_past_its_connections(gateway: tuple[str, int]) -> None:
    _, port = gateway
    probe = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"  # keep-alive: the refusal closes

    def probe_each_worker() -> list[bytes]:
        # The parent deals connections to the two workers in turn: one probe reaches each.
        time.sleep(0.3)  # the held connections have reached their workers
        answers = []
        for _ in range(2):
            with _connect(port) as conn:
                conn.sendall(probe.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                answers.append(_read_to_close(conn))
        return answers

    held = [_connect(port) for _ in range(2 * (MAX_CONNECTIONS - 1))]
    try:
        assert [a[:12] for a in probe_each_worker()] == [b"HTTP/1.1 200"] * 2  # its MAX_CONNECTIONS-th
        held += [_connect(port) for _ in range(2)]
        refused = probe_each_worker()  # one past them
        assert [a[:12] for a in refused] == [b"HTTP/1.1 503"] * 2
        with _connect(port) as conn:  # a client that would keep the connection is told it closes
            conn.sendall(probe)
            refused.append(_read_to_close(conn))
    finally:
        for conn in held:
            conn.close()
    for answer in refused:
        # A problem, as the OpenAPI page documents every 503.
        head, body = answer.split(b"\r\n\r\n", 1)
        fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
        assert fields[b"content-type"] == b"application/problem+json"
        assert fields[b"connection"] == b"close"
        problem = json.loads(body)
        assert problem["status"] == 503 and problem["title"] == "Service unavailable"
        assert f"at most {MAX_CONNECTIONS} connections" in problem["detail"]
    time.sleep(0.3)
    assert [a[:12] for a in probe_each_worker()] == [b"HTTP/1.1 200"] * 2


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("max_header_bytes", "1024", "greater than or equal to 81920"),
        ("request_timeout_s", "0", "greater than or equal to 1"),
        ("max_connections", '"many"', "valid integer"),
    ],
)
def test_a_bad_bound_is_refused_naming_its_key_and_line(
    site: Site, monkeypatch: pytest.MonkeyPatch, key: str, value: str, rule: str
) -> None:
    for name in BOUNDS:  # the served gateway's overrides would stand in for the file's values
        monkeypatch.delenv(name, raising=False)
    config = site.config.with_name("bounds.toml")
    config.write_text(site.config.read_text().split("[server]")[0] + f"[server]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    line = len(config.read_text().splitlines())
    assert str(refused.value).startswith(f"{config}:{line}: server.{key}: "), refused.value
    assert rule in str(refused.value)


def test_the_head_cap_leaves_room_for_the_longest_token_the_gateway_accepts() -> None:
    least = ServerSettings.model_fields["max_header_bytes"].metadata
    assert min(m.ge for m in least if hasattr(m, "ge")) > MAX_TOKEN_BYTES + 8 * 1024
    assert ServerSettings().max_header_bytes >= 2 * MAX_TOKEN_BYTES
