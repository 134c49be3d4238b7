"""The store's catalog as the gateway reads it: the newest version of each dataset, cached briefly.

Every query looks its dataset up here, on the event loop. Reading the catalog is a store query (about
10 ms of wall time on a busy worker), so the loop must not wait for it on the way to an answer: once the
read it holds is older than `ttl_s`, the view starts the next read on a thread of its own and answers from
the one it holds meanwhile. Only a read older than `max_stale_s` (a gateway that had no requests for a
while) or none at all is waited for. Published versions never change, so a held read is a true, if
slightly older, picture of the catalog.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

from pseudonymize.store import CATALOG, CatalogEntry

log = logging.getLogger(__name__)


class CatalogView:
    """Reads `fedgate_catalog` through the query engine.

    Under steady traffic a new version is seen within `ttl_s` plus one read; an answer never rests on a
    read older than `max_stale_s` (default: twice `ttl_s`)."""

    def __init__(self, engine: sa.Engine, ttl_s: float = 2.0, max_stale_s: float | None = None) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._max_stale = max(ttl_s, 2 * ttl_s if max_stale_s is None else max_stale_s)
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._entries: list[CatalogEntry] = []
        self._reading = False

    def refresh(self) -> list[CatalogEntry]:
        """Read the catalog now."""
        started = time.monotonic()
        entries = self._read()
        with self._lock:
            if started >= self._loaded_at:  # a read that began earlier must not replace a newer one
                self._entries, self._loaded_at = entries, started
        return entries

    def entries(self) -> list[CatalogEntry]:
        """Every published version, oldest first."""
        with self._lock:
            age = time.monotonic() - self._loaded_at
            if age < self._ttl:
                return list(self._entries)
            if age < self._max_stale and (self._reading or self._start_read_behind()):
                return list(self._entries)
        return self.refresh()

    def latest(self, dataset: str, *, fresh: bool = False) -> CatalogEntry | None:
        """The newest published version of a dataset, or None; with `fresh`, from a read made now (for a
        caller off the event loop that must not act on a version older than the newest)."""
        found = [e for e in (self.refresh() if fresh else self.entries()) if e.dataset == dataset]
        return found[-1] if found else None

    def _read(self) -> list[CatalogEntry]:
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(CATALOG):
                rows: list[dict[str, Any]] = []
            else:
                result = conn.execute(sa.text(f"SELECT * FROM {CATALOG} ORDER BY dataset, version"))
                rows = [dict(r._mapping) for r in result]
        return [CatalogEntry.from_row(r) for r in rows]

    def _start_read_behind(self) -> bool:
        """Start a read on the view's own thread (the lock held); False if no thread could be started."""
        self._reading = True
        try:
            threading.Thread(target=self._read_behind, name="catalog-read", daemon=True).start()
        except RuntimeError:
            self._reading = False
        return self._reading

    def _read_behind(self) -> None:
        """A read on the view's own thread; a failure keeps the held read (it is tried again on the next
        lookup, and waited for, with its error, once the held read is older than `max_stale_s`)."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - the held read stays; the next lookup reads again
            log.warning(
                "reading the catalog failed; answering from the read of before: %s", type(exc).__name__
            )
        finally:
            with self._lock:
                self._reading = False
