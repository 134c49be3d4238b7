"""Several worker processes behind one listening socket, the connections dealt out in turn.

uvicorn's own workers all accept on the shared socket, and whichever is awake takes every connection
waiting: a client that opens its keep-alive connections in one burst (a load balancer, a federated
coordinator, a benchmark) can land all of them on one worker while the others idle, and one core then
answers for the whole gateway. Here the parent process accepts and hands each connection to the next worker
in turn (over a Unix socket pair, `SCM_RIGHTS`), so that N workers hold within one of the same number of
connections; the workers serve them exactly as uvicorn would (its HTTP protocol on an accepted socket).

The parent restarts a worker that dies, stops them all on SIGTERM or SIGINT (each finishes what it is
answering, as uvicorn does), and gives up, with exit code 1, if workers keep dying as they start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

import uvicorn

from gateway.cli.http_limits import BoundedHttpToolsProtocol

log = logging.getLogger("fedgate.serve")

HANDOFF_ENV: Final = "FEDGATE_HANDOFF_FD"
"""The worker's end of its socket pair with the parent (a file descriptor number)."""
_STOP_TIMEOUT_S: Final = 30.0
_QUICK_DEATH_S: Final = 5.0
_QUICK_DEATHS: Final = 5
"""Workers dying within `_QUICK_DEATH_S` of their start, or failing their start-up, this many times in a
row: the parent gives up."""
STARTUP_FAILED: Final = 3
"""A worker's exit code when its app refused to start (uvicorn's): counted however long the start took, as
a loaded machine can take longer than `_QUICK_DEATH_S` to find a bad key or policy."""


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    channel: socket.socket
    started: float = field(default_factory=time.monotonic)


APP: Final = "gateway.app:app_from_environment"
APP_OPTIONS: Final[dict[str, Any]] = {
    "factory": True,
    "log_level": "info",
    "access_log": False,
    # httptools, as uvicorn would choose, within the bounds of the site's [server] table.
    "http": BoundedHttpToolsProtocol,
}
"""How uvicorn runs the gateway, in a worker of the parent here or by itself (`fedgate serve`)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` and listening (OSError when the address is taken or not this host's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except BaseException:
        listener.close()
        raise
    return listener


class Dispatcher:
    """The parent: runs `count` workers and deals them the connections accepted on `listener`."""

    def __init__(self, listener: socket.socket, count: int) -> None:
        self.host, self.port = listener.getsockname()[:2]
        self.count = count
        self.listener = listener
        self.listener.setblocking(False)
        self.workers: list[_Worker] = []
        self._turn = 0
        self._stopping = False
        self._quick_deaths = 0

    def run(self) -> int:
        """Serve until a stop signal; the exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.workers = [self._spawn() for _ in range(self.count)]
            with selectors.DefaultSelector() as selector:
                selector.register(self.listener, selectors.EVENT_READ)
                while not self._stopping:
                    if selector.select(timeout=0.5):
                        self._deal()
                    if not self._keep_workers():
                        return 1
            return 0
        finally:
            self.listener.close()
            self._stop_workers()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _spawn(self) -> _Worker:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[HANDOFF_ENV] = str(child_end.fileno())
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.serve_worker", self.host, str(self.port)],
            env=env, pass_fds=(child_end.fileno(),),
        )  # fmt: skip
        child_end.close()
        parent_end.setblocking(False)  # a worker that stops reading is passed over, not waited for
        return _Worker(process, parent_end)

    def _deal(self) -> None:
        """Accept what is waiting, each connection to the next worker in turn."""
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: the client is dropped, the server lives
                log.error("fedgate serve: accept failed (%s)", type(exc).__name__)
                return
            with conn:
                for _ in range(len(self.workers)):
                    worker = self.workers[self._turn % len(self.workers)]
                    self._turn += 1
                    try:
                        socket.send_fds(worker.channel, [b"c"], [conn.fileno()])
                        break
                    except OSError:
                        continue  # gone (_keep_workers replaces it) or not reading: the next one takes it
                # The worker holds its own descriptor now; this one closes with the block.

    def _keep_workers(self) -> bool:
        """Replace dead workers; False once they keep dying as they start."""
        for i, worker in enumerate(self.workers):
            code = worker.process.poll()
            if code is None or self._stopping:
                continue
            quick = code == STARTUP_FAILED or time.monotonic() - worker.started < _QUICK_DEATH_S
            self._quick_deaths = self._quick_deaths + 1 if quick else 0
            log.error("fedgate serve: worker %d exited with code %s", worker.process.pid, code)
            worker.channel.close()
            if self._quick_deaths >= _QUICK_DEATHS:
                log.error("fedgate serve: workers keep failing as they start; stopping")
                return False
            self.workers[i] = self._spawn()
        return True

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.channel.close()


class HandoffServer(uvicorn.Server):
    """A uvicorn server that listens on nothing and serves the connections its parent hands over."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel
        self._handoffs: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._receive, loop)

    def _receive(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, 64, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:  # the parent is gone: no more connections will come
            loop.remove_reader(self.channel.fileno())
            self.should_exit = True
            return
        for fd in fds:
            conn = socket.socket(fileno=fd)
            if self.should_exit:
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self._protocol, conn))
            self._handoffs.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(functools.partial(self._handed_off, conn))

    def _protocol(self, conn_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        """uvicorn's HTTP protocol for one connection, as its own listening server would make it."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state, _loop=conn_loop
        )

    def _handed_off(self, conn: socket.socket, task: asyncio.Task[Any]) -> None:
        self._handoffs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            conn.close()  # the client went away before its connection was set up

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # No more connections: those the parent still hands over are closed unanswered by _receive.
        asyncio.get_running_loop().remove_reader(self.channel.fileno())
        await super().shutdown(sockets=sockets)


def worker_main() -> None:
    """A worker process: `python -m gateway.serve_worker HOST PORT` with the handoff descriptor in the
    environment."""
    host, port = sys.argv[1], int(sys.argv[2])
    channel = socket.socket(fileno=int(os.environ.pop(HANDOFF_ENV)))
    HandoffServer(uvicorn.Config(APP, host=host, port=port, **APP_OPTIONS), channel).run()
