"""A time budget for the store's work on one query: a DuckDB connection held longer is interrupted.

A query holds one of the store's connections, and one of its worker's pool threads, from the moment it
takes the connection until it gives it back. DuckDB has no statement timeout of its own, so a watchdog
thread interrupts the DuckDB connection of a query that has held it for longer than the site's
`[server] store_timeout_s`: the statement ends with DuckDB's InterruptException, the query is refused
(`timed_out` recognises it) and the connection stays usable. PostgreSQL enforces the same budget itself,
per statement, through its `statement_timeout` (gateway.query.execute.store_engine).

The watchdog looks at the connections held now a few times per budget (never more than 20 times a
second, twice a second for the default budget) instead of keeping a timer per query: a query takes and
gives back its connection in a few microseconds of bookkeeping and never wakes the watchdog, so a gateway
answering hundreds of queries a second wakes it no more often than an idle one."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import duckdb
import sqlalchemy as sa

log = logging.getLogger(__name__)

MIN_TICK_S: Final = 0.05
MAX_TICK_S: Final = 0.5

_HELD: Final = "fedgate_deadline"
"""Where a checked-out connection's record keeps its watchdog token."""


class Watchdog:
    """Calls each armed action at every look once its deadline has passed, until it is disarmed."""

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, Callable[[], Any]]] = {}
        self._tick = MAX_TICK_S
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], Any]) -> int:
        """Call `action` (from the watchdog's thread) once `seconds` have passed; a token for `disarm`."""
        number = next(self._numbers)
        deadline = time.monotonic() + seconds
        tick = min(MAX_TICK_S, max(MIN_TICK_S, seconds / 10))
        with self._lock:
            self._armed[number] = (deadline, action)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="fedgate-store-deadline", daemon=True
                )
                self._thread.start()
            if tick < self._tick:  # a shorter budget than any before: look sooner from now on
                self._tick = tick
                self._lock.notify()
        return number

    def disarm(self, number: int) -> None:
        """The action of `number` will not be called again (it is called at every look of the watchdog
        from its deadline on, until disarmed)."""
        with self._lock:
            self._armed.pop(number, None)

    def __len__(self) -> int:
        """How many actions are armed now."""
        with self._lock:
            return len(self._armed)

    def _watch(self) -> None:
        while True:
            with self._lock:
                # Woken by the clock only: a query taking a connection never wakes this thread (under load
                # that would be a hand-off of the interpreter lock per query), so an idle gateway's watchdog
                # looks a few times a second at nothing.
                self._lock.wait(self._tick)
                # Again at every look until disarmed: an interrupt that came between two statements of one
                # query found nothing running, and the next one must not run unbounded. Under the lock: a
                # query that gives its connection back waits in `disarm` until the interrupt is done, so
                # none lands on the connection's next user.
                _fire_due(self._armed.values(), time.monotonic())


def _fire_due(armed: Iterable[tuple[float, Callable[[], Any]]], now: float) -> None:
    """Call every action whose deadline has passed; a function of its own, so that the watchdog's frame
    keeps no connection alive between looks."""
    for deadline, action in armed:
        if deadline <= now:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the watchdog outlives any one action
                log.warning("store deadline: the interrupt failed (%s)", type(exc).__name__)


WATCHDOG: Final = Watchdog()


def bound_duckdb(engine: sa.Engine, seconds: float) -> None:
    """Interrupt a connection of `engine` (DuckDB) held for longer than `seconds`."""

    @sa.event.listens_for(engine, "checkout")
    def _arm(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        record.info[_HELD] = WATCHDOG.arm(seconds, dbapi_connection.interrupt)

    @sa.event.listens_for(engine, "checkin")
    def _disarm(_dbapi_connection: Any, record: Any) -> None:
        number = record.info.pop(_HELD, None)
        if number is not None:
            WATCHDOG.disarm(number)


POSTGRES_QUERY_CANCELED: Final = "57014"
"""SQLSTATE query_canceled: what a PostgreSQL statement that ran past `statement_timeout` ends with."""


def timed_out(exc: BaseException) -> bool:
    """Whether the store stopped a statement because it ran past the budget."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(cause, duckdb.InterruptException):
        return True
    return getattr(cause, "sqlstate", None) == POSTGRES_QUERY_CANCELED
