"""The store's catalog as the gateway reads it: the newest version of each dataset, cached briefly."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa

from pseudonymize.store import CATALOG, CatalogEntry


class CatalogView:
    """Reads `fedgate_catalog` through the query engine; a fresh ingest is seen within `ttl_s`."""

    def __init__(self, engine: sa.Engine, ttl_s: float = 2.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._entries: list[CatalogEntry] = []

    def refresh(self) -> list[CatalogEntry]:
        """Read the catalog now."""
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(CATALOG):
                rows: list[dict[str, Any]] = []
            else:
                result = conn.execute(sa.text(f"SELECT * FROM {CATALOG} ORDER BY dataset, version"))
                rows = [dict(r._mapping) for r in result]
        entries = [CatalogEntry.from_row(r) for r in rows]
        with self._lock:
            self._entries, self._loaded_at = entries, time.monotonic()
        return entries

    def entries(self) -> list[CatalogEntry]:
        """Every published version, oldest first."""
        with self._lock:
            fresh = time.monotonic() - self._loaded_at < self._ttl
            if fresh:
                return list(self._entries)
        return self.refresh()

    def latest(self, dataset: str) -> CatalogEntry | None:
        """The newest published version of a dataset, or None."""
        found = [e for e in self.entries() if e.dataset == dataset]
        return found[-1] if found else None
