"""Replay defence: every peer assertion's `jti` is remembered in the state database until it expires.

A table of its own in the gateway's state database, so several uvicorn workers (or gateway replicas on one
PostgreSQL) share it: the primary key makes the second use of a nonce fail in whichever worker sees it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from audit.storage import create_schema, sqlite_wal

PURGE_EVERY_S = 10
metadata = sa.MetaData()

peer_nonces = sa.Table(
    "peer_nonces",
    metadata,
    sa.Column("peer", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    sqlite_wal(cursor)
    cursor.close()


class NonceLedger:
    """Seen assertion nonces: `claim` succeeds once per (peer, jti)."""

    def __init__(self, state_url: str) -> None:
        if state_url.startswith("sqlite:///"):
            Path(state_url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(state_url, hide_parameters=True)
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        create_schema(self._engine, metadata)  # several workers may start on a new file at once
        self._purged_at = 0

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()

    def claim(self, peer: str, jti: str, expires_at: int, *, now: float | None = None) -> bool:
        """Record a nonce; False when it was seen before (a replay). Expired nonces are forgotten here, at
        most every PURGE_EVERY_S: an assertion past its expiry is refused as stale before its nonce is ever
        looked up, so forgetting it cannot let a replay through."""
        now_s = int(time.time() if now is None else now)
        try:
            with self._engine.begin() as conn:
                if now_s - self._purged_at >= PURGE_EVERY_S:
                    conn.execute(peer_nonces.delete().where(peer_nonces.c.expires_at < now_s))
                    self._purged_at = now_s
                conn.execute(peer_nonces.insert().values(peer=peer, jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def size(self) -> int:
        """Nonces currently remembered (for tests and the steward's view)."""
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(peer_nonces)).scalar_one())
