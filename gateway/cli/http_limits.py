"""uvicorn's httptools protocol with bounds on what a request may cost the server before it is complete.

uvicorn itself bounds neither a request's head nor the time the request takes to arrive: one header of
100 MB stalls a worker for seconds (httptools gathers a header by concatenation, in quadratic time), and
connections that stop halfway, each holding up to a body's worth of memory, stay open for ever. Here each
connection of a worker:

- refuses a head (the request line and the headers) longer than `[server] max_header_bytes` with a 431,
  having parsed no more of it than that;
- answers a request that is not complete `[server] request_timeout_s` after its first byte with a 408 and
  closes (time the server makes the client wait does not count: reading paused until the app takes what
  came, a `100 Continue` not yet sent);
- is one of at most `[server] max_connections` that the worker serves: a request on one more is answered
  with a 503 problem (as uvicorn's `limit_concurrency` counts, in place of its text/plain answer), and the
  connection closes.

A connection on which no request is under way, new or between two requests, is closed by uvicorn's own
keep-alive timeout (`timeout_keep_alive`). A refusal is sent, the connection's sending side is shut and what
the client still sends is read and dropped for `LINGER_S`: closed at once with unread data, the connection
would be reset, and the client could lose the answer.

The work added to a request is reading the loop's clock at its first byte, and per chunk received one
comparison (a body) or a counter and a comparison (a head); a connection's timer is armed once per
timeout, not once per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Final, cast

from starlette.responses import Response
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from gateway.app import CONFIG_ENV
from gateway.problems import raw_refusal, worker_full
from gateway.settings import ServerSettings, get_settings

log = logging.getLogger("fedgate.serve")

LINGER_S: Final = 1.0
"""How long a refused connection reads and drops what its client still sends before it closes."""


@dataclass(frozen=True)
class RequestBounds:
    """What one worker allows a request on its way in (from `[server]`), with its two refusals built."""

    max_header_bytes: int
    request_timeout_s: float
    max_connections: int
    header_too_large: tuple[int, bytes]
    """The status and the answer after its status line and the server's own headers (header fields, blank
    line and body) of a request whose head is over the limit (`problems.raw_refusal`)."""
    request_timeout: tuple[int, bytes]
    """The same of a request that did not arrive in time."""
    worker_full: Response
    """The answer (an ASGI app, run in place of the gateway's) to a request on a connection past
    `max_connections` (`problems.worker_full`)."""

    @classmethod
    def of(cls, server: ServerSettings) -> RequestBounds:
        return cls(
            server.max_header_bytes,
            server.request_timeout_s,
            server.max_connections,
            raw_refusal(
                "header_too_large",
                f"the request line and headers may hold at most {server.max_header_bytes} bytes",
            ),
            raw_refusal(
                "request_timeout",
                f"the request was not complete {server.request_timeout_s:g} s after its first byte",
            ),
            worker_full(server.max_connections),
        )


@functools.cache
def served_bounds() -> RequestBounds:
    """The bounds of the site this process serves: the `[server]` table of $FEDGATE_CONFIG, read as its app
    reads it (environment overrides included); uvicorn loads the app, which needs the variable, before it
    makes a connection's protocol. The defaults when no site is configured."""
    path = os.environ.get(CONFIG_ENV)
    return RequestBounds.of(get_settings(path).server if path else ServerSettings())


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One connection: uvicorn's httptools protocol within `served_bounds()`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.bounds = served_bounds()
        # A request is refused once the worker holds this many connections (this one included) or requests
        # under way, as uvicorn counts for `limit_concurrency`; uvicorn's own check, which answers in plain
        # text, is off (`on_headers_complete` checks instead).
        self.limit_concurrency = None
        self._most_connections = self.bounds.max_connections + 1
        self._head_bytes = 0
        """Bytes received of the head under way; -1 while its body arrives."""
        self._started: float | None = None
        """The loop's time at the first byte of the request under way; None between requests."""
        # Armed at a request's first byte when not armed already, and not cancelled when the request is
        # complete: a timer per request would cost more than the rest of this class. When it fires it
        # checks the request under way, if any, and is armed again for what remains of that one's time.
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Until a request's first byte the connection is idle, as between two requests: uvicorn's keep-alive
        # timeout closes it (uvicorn arms that only once a response is complete).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes < 0:  # a body: the parser takes it as it comes
            super().data_received(data)
            return
        if self._refused:
            return  # answered and closing: what the client still sends is dropped
        if self._started is None:
            self._started = self.loop.time()
            if self._deadline is None:
                self._deadline = self.loop.call_later(self.bounds.request_timeout_s, self._timed_out)
        self._head_bytes += len(data)
        if self._head_bytes <= self.bounds.max_header_bytes:
            super().data_received(data)
        else:
            self._past_the_cap(data)

    def _past_the_cap(self, data: bytes) -> None:
        """The bytes received of the head have passed the cap with `data`, which may also hold the start of
        the body: parse up to the cap, and refuse the request unless its head ended there."""
        room = self.bounds.max_header_bytes - (self._head_bytes - len(data))
        super().data_received(data[:room])
        if self.transport.is_closing():  # uvicorn refused the request as malformed
            return
        if self._head_bytes > self.bounds.max_header_bytes:
            log.warning("refused a request whose head passed %d bytes (431)", self.bounds.max_header_bytes)
            self._refuse(self.bounds.header_too_large)
        else:
            self.data_received(data[room:])

    # Parser callbacks. A request whose first bytes came in the read that completed the one before (a
    # pipelined request) is counted and timed from the next read: its head can pass the cap by at most what
    # one read takes in (256 KiB), and until that read uvicorn's keep-alive timeout closes the connection.
    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        most = self._most_connections
        if len(self.connections) < most and len(self.tasks) < most:
            super().on_headers_complete()
            return
        log.warning("refused a request past the worker's %d connections (503)", self.bounds.max_connections)
        # uvicorn starts the request's cycle with `self.app` (or queues it behind a pipelined one): this
        # request's is the refusal.
        app, self.app = self.app, cast("ASGI3Application", self.bounds.worker_full)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._started = None
        self._head_bytes = 0
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is another protocol's from here
        super().handle_websocket_upgrade()

    def _disarm(self) -> None:
        for timer in (self._deadline, self._linger):
            if timer is not None:
                timer.cancel()
        self._deadline = self._linger = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self._started is None or self._refused or self.transport.is_closing():
            return  # no request under way: the next one arms the timer again
        left = self._started + self.bounds.request_timeout_s - self.loop.time()
        if left > 0:  # armed for a request that is complete; this one began later
            self._deadline = self.loop.call_later(left, self._timed_out)
            return
        cycle: RequestResponseCycle | None = self.cycle  # this request's once its head is in
        if cycle is not None and self._head_bytes < 0:
            if cycle.response_started:
                # Answered before its body came (a refusal that needed no body): nothing is left to say.
                self.transport.close()
                return
            if self.flow.read_paused or cycle.waiting_for_100_continue:
                # The server holds the body up, not the client: the app has not yet taken what came, or
                # not yet asked for it. The client's time starts again.
                self._started = self.loop.time()
                self._deadline = self.loop.call_later(self.bounds.request_timeout_s, self._timed_out)
                return
        log.warning(
            "closed a request not complete %g s after its first byte (408)", self.bounds.request_timeout_s
        )
        self._refuse(self.bounds.request_timeout)

    def _refuse(self, refusal: tuple[int, bytes]) -> None:
        """Answer the refusal (its status and what follows the status line) and close; or, while the
        request before this one (pipelined) is still being answered, close once that answer is out."""
        in_body = self._head_bytes < 0
        self._disarm()
        self._unset_keepalive_if_required()
        self._refused = True
        self._head_bytes = 0  # from here on, what comes is dropped
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not in_body:  # the cycle is the request before's
                cycle.keep_alive = False
                self.flow.pause_reading()
                return
            # This request's app runs and has not answered: it reads a disconnect, its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        defaults = b"".join(
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        )
        status, answer = refusal
        self.transport.write(STATUS_LINE[status] + defaults + answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)
