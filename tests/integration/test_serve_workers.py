"""`fedgate serve` with several workers: connections dealt out in turn, a dead worker replaced, a clean stop.

Each test runs the real command in its own process tree and reads the workers' open sockets from /proc.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from gateway_site import Site, bearer, free_port
from oidc_issuer import LoopbackTestIssuer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads worker processes and their sockets from /proc (Linux)"
)

QUERY = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]},
         "kind": "count", "group_by": ["sex"]}  # fmt: skip


def _configure(site: Site, port: int, workers: int) -> Path:
    site.config.write_text(site.config.read_text() + f"[server]\nport = {port}\nworkers = {workers}\n")
    return site.config


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _refused_start(config: Path) -> tuple[int | None, str]:
    """Start `fedgate serve` on a config it should refuse: its exit code and what it wrote to stderr."""
    process = _start(config)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err.decode()


def _workers(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    workers = []
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"gateway.serve_worker" in command:
            workers.append(int(pid))
    return sorted(workers)


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(FileNotFoundError):
            count += str(fd.readlink()).startswith("socket:")
    return count


def _healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"fedgate serve exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("fedgate serve did not answer /healthz")


@contextmanager
def _served(site: Site, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    process = _start(_configure(site, port, workers))
    url = f"http://127.0.0.1:{port}"
    try:
        _healthy(url, process)
        # Every worker is up (each answered or is listening on its channel) before a test counts sockets.
        deadline = time.monotonic() + 60
        while len(_workers(process.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()  # type: ignore[union-attr]


def _answered(connections: list[http.client.HTTPConnection]) -> None:
    for conn in connections:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        assert response.status == 200


def test_connections_opened_in_one_burst_are_shared_evenly_by_the_workers(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    with _served(tmp_site, workers=2) as (process, url):
        port = int(url.rsplit(":", 1)[1])
        workers = _workers(process.pid)
        assert len(workers) == 2
        # Warm both workers so that their own sockets (store, state, identity provider) are open.
        warm = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(8)]
        _answered(warm)
        for conn in warm:
            conn.close()
        time.sleep(0.5)
        before = {pid: _sockets(pid) for pid in workers}
        burst = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(16)]
        for conn in burst:
            conn.connect()
        _answered(burst)  # each connection reached a worker, which holds it open
        gained = {pid: _sockets(pid) - before[pid] for pid in workers}
        assert sorted(gained.values()) == [8, 8], gained
        # And a query answers through a dealt connection as through any other.
        answer = httpx.post(f"{url}/v1/queries", json=QUERY, headers=bearer(idp, "researcher"), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "released"
        for conn in burst:
            conn.close()


def test_a_worker_that_dies_is_replaced_and_the_gateway_keeps_answering(tmp_site: Site) -> None:
    with _served(tmp_site, workers=2) as (process, url):
        victim, survivor = _workers(process.pid)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(process.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        now = _workers(process.pid)
        assert survivor in now and victim not in now and len(now) == 2
        for _ in range(6):  # new connections go to both workers in turn, the new one included
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        assert process.poll() is None


def test_sigterm_stops_the_parent_and_every_worker(tmp_site: Site) -> None:
    with _served(tmp_site, workers=2) as (process, _):
        workers = _workers(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
    assert not any(_alive(pid) for pid in workers)


def test_workers_stop_on_their_own_when_the_parent_is_killed(tmp_site: Site) -> None:
    with _served(tmp_site, workers=2) as (process, _):
        workers = _workers(process.pid)
        process.kill()  # no chance to stop them: each must notice its channel closing
        process.wait()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return b"zombie" not in status.read_bytes().lower()
    except FileNotFoundError:
        return False


def test_one_worker_is_served_by_uvicorn_in_the_process_itself(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    port = free_port()
    process = _start(_configure(tmp_site, port, workers=1))
    try:
        _healthy(f"http://127.0.0.1:{port}", process)
        assert _workers(process.pid) == []  # no parent dealing connections: nothing to deal them to
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/queries", json=QUERY, headers=bearer(idp, "researcher"), timeout=30
        )
        assert answer.status_code == 200, answer.text
        process.send_signal(signal.SIGTERM)
        # uvicorn stops gracefully, then raises the signal it caught again (its exit status says SIGTERM).
        assert process.wait(timeout=40) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(("workers", "said"), [(1, "1 worker"), (2, "2 workers")])
def test_the_server_says_where_it_listens_whatever_its_workers(
    tmp_site: Site, workers: int, said: str
) -> None:
    port = free_port()
    process = _start(_configure(tmp_site, port, workers=workers))
    try:
        _healthy(f"http://127.0.0.1:{port}", process)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        text = process.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # type: ignore[union-attr]
    assert f"fedgate site-de serving on http://127.0.0.1:{port} ({said})\n" in text


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_already_taken_is_refused_with_the_address(tmp_site: Site, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, message = _refused_start(_configure(tmp_site, port, workers=workers))
    assert code == 2  # EXIT_BAD_INPUT: the config's address cannot be used
    # One line naming the file and the address: no server log lines, no traceback.
    assert message.strip().splitlines() == [message.strip()]
    assert f"127.0.0.1:{port}" in message and "site.toml" in message and "in use" in message


def test_a_site_that_cannot_start_says_why_before_any_worker_starts(tmp_site: Site) -> None:
    # A policy that does not compile: the server checks what every worker would open, and stops with one
    # line naming the file, rather than spawning workers that each fail with a traceback.
    (tmp_site.root / "policies/broken.rego").write_text("package fedgate.broken\n\nallow if {\n")
    code, text = _refused_start(_configure(tmp_site, free_port(), workers=2))
    assert code == 2, text
    assert "the gateway cannot start" in text and "broken.rego" in text
    assert "Traceback" not in text and "worker" not in text


def test_a_peer_key_no_worker_could_read_stops_the_server_in_one_line(tmp_site: Site) -> None:
    from gateway.federation.signing import generate_peer_key

    config = _configure(tmp_site, free_port(), workers=2)
    key = tmp_site.root / "peer.key"
    generate_peer_key(key)
    peer = '[[peers]]\nid = "site-fr"\nurl = "https://fr.example"\nrequest_key = "AAAA"\nlog_key = "x+1+A"\n'
    config.write_text(f'peer_key_file = "{key}"\n' + config.read_text() + "\n" + peer)
    code, message = _refused_start(config)
    assert code == 2, message
    assert "the gateway cannot start" in message and "peers.site-fr.request_key" in message
    assert "Traceback" not in message


def test_workers_failing_their_start_make_the_server_give_up_however_slowly_they_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.cli import workers

    class Failed:
        """A worker process that has exited with `code`."""

        pid = 0

        def __init__(self, code: int) -> None:
            self.code = code

        def poll(self) -> int:
            return self.code

    dispatcher = workers.Dispatcher(workers.listening_socket("127.0.0.1", free_port()), 1)
    try:
        # On a loaded machine a start can take longer than the quick-death window, yet still fail.
        slow_start = time.monotonic() - 60
        spawned = [
            workers._Worker(Failed(workers.STARTUP_FAILED), socket.socket(), slow_start)  # type: ignore[arg-type]
            for _ in range(10)
        ]
        monkeypatch.setattr(dispatcher, "_spawn", lambda: spawned.pop())
        dispatcher.workers = [dispatcher._spawn()]
        answers = [dispatcher._keep_workers() for _ in range(workers._QUICK_DEATHS)]
        assert answers == [True] * (workers._QUICK_DEATHS - 1) + [False]
        # A worker that served a while and then died is replaced, and the count starts again.
        dispatcher._quick_deaths = workers._QUICK_DEATHS - 1
        dispatcher.workers = [workers._Worker(Failed(1), socket.socket(), slow_start)]  # type: ignore[arg-type]
        assert dispatcher._keep_workers() and dispatcher._quick_deaths == 0
    finally:
        dispatcher.listener.close()
        for left in [*spawned, *dispatcher.workers]:
            left.channel.close()
