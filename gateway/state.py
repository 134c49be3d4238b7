"""The gateway's own persistent state: requests awaiting or past approval, and repeated-query counts.

Kept apart from the store (read-only for queries) and the audit log (append-only). SQLite by default,
PostgreSQL in production. Holds no token and no patient-level data: principals are their verified claims,
results are what was (or would be) released.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from audit.storage import create_schema, sqlite_wal
from pseudonymize.pseudonym import canonical_token, token_spellings

# Withdrawals are written in statements of this many rows: SQLite binds at most 32,766 parameters.
_ROWS_PER_STATEMENT = 500

RequestStatus = Literal["pending_approval", "deciding", "released", "refused", "rejected"]

metadata = sa.MetaData()

query_counts = sa.Table(
    "query_counts",
    metadata,
    sa.Column("subject", sa.String(256), primary_key=True),
    sa.Column("agreement", sa.String(256), primary_key=True),
    sa.Column("query_hash", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("agreement", sa.String(256), nullable=False),
    sa.Column("dataset", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("query_hash", sa.String(64), nullable=False),
    sa.Column("principal", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("decided_by", sa.String(256), nullable=True),
)


outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False, index=True),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("org", sa.String(256), nullable=False),
    sa.Column("agreement", sa.String(256), nullable=False),
    sa.Column("dataset", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("stage", sa.String(32), nullable=True),
    sa.Column("cells", sa.Integer, nullable=True),
    sa.Column("suppressed", sa.Integer, nullable=True),
)


withdrawals = sa.Table(
    "withdrawals",
    metadata,
    sa.Column("dataset", sa.String(256), primary_key=True),
    sa.Column("key_context", sa.String(256), primary_key=True),
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StoredRequest:
    """A query the gateway keeps: waiting for a steward, or answered after approval."""

    request_id: str
    status: RequestStatus
    subject: str
    agreement: str
    dataset: str
    kind: str
    query_hash: str
    principal: dict[str, Any]
    spec: dict[str, Any]
    reasons: list[str]
    result: dict[str, Any] | None
    created_at: str
    updated_at: str
    decided_by: str | None


class GatewayState:
    """Access to the state database; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(url)
        # SQLite takes one writer at a time, and a writer that finds the database locked sleeps in SQLite's
        # busy handler (1, 2, 5, 10 … ms): threads of this process take turns on a lock instead, which costs
        # microseconds. PostgreSQL locks rows and needs no such turn.
        self._write_turn: threading.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            self._write_turn = threading.Lock()
        create_schema(self._engine, metadata)  # several workers may start on a new file at once
        # The two writes of every query, built once: their values are bound at execution, so SQLAlchemy
        # neither rebuilds nor re-keys a statement per request.
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        counted = insert(query_counts).values(count=1)
        self._count_query = counted.on_conflict_do_update(
            index_elements=["subject", "agreement", "query_hash"], set_={"count": query_counts.c.count + 1}
        ).returning(query_counts.c.count)
        ended = insert(outcomes)
        self._record_outcome = ended.on_conflict_do_update(
            index_elements=["request_id"],
            set_={c.name: ended.excluded[c.name] for c in outcomes.c if c.name != "request_id"},
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """One write transaction, committed on exit."""
        with self._write_turn, self._engine.begin() as conn:
            yield conn

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()

    def count_query(self, subject: str, agreement: str, query_hash: str) -> int:
        """Count one more asking of this exact query by this researcher under this agreement; return the
        total so far."""
        values = {"subject": subject, "agreement": agreement, "query_hash": query_hash}
        with self._writing() as conn:
            total = conn.execute(self._count_query, values).scalar_one()
        return int(total)

    def record_outcome(
        self,
        request_id: str,
        *,
        subject: str,
        org: str,
        agreement: str,
        dataset: str,
        kind: str,
        outcome: Literal["released", "refused", "pending_approval"],
        stage: str | None = None,
        cells: int | None = None,
        suppressed: int | None = None,
    ) -> None:
        """Remember how a request ended, for the steward's activity summary (upserts by request id)."""
        row = {
            "request_id": request_id, "at": _now(), "subject": subject, "org": org, "agreement": agreement,
            "dataset": dataset, "kind": kind, "outcome": outcome, "stage": stage, "cells": cells,
            "suppressed": suppressed,
        }  # fmt: skip
        with self._writing() as conn:
            conn.execute(self._record_outcome, row)

    def activity(self, since: str) -> dict[str, Any]:
        """What was released and refused since a time: per agreement, dataset, kind and outcome, and the
        researchers with the most refusals (a burst of refusals can be an attempt to isolate individuals)."""
        o = outcomes.c
        with self._engine.connect() as conn:
            groups = conn.execute(
                sa.select(o.agreement, o.dataset, o.kind, o.outcome, sa.func.count().label("requests"),
                          sa.func.coalesce(sa.func.sum(o.suppressed), 0).label("suppressed_cells"))
                .where(o.at >= since)
                .group_by(o.agreement, o.dataset, o.kind, o.outcome)
                .order_by(o.agreement, o.dataset, o.kind, o.outcome)
            ).all()  # fmt: skip
            refusals = conn.execute(
                sa.select(o.subject, o.org, sa.func.count().label("refused"))
                .where(o.at >= since, o.outcome == "refused")
                .group_by(o.subject, o.org)
                .order_by(sa.func.count().desc())
                .limit(20)
            ).all()
        return {
            "since": since,
            "by_agreement": [dict(r._mapping) for r in groups],
            "most_refused": [dict(r._mapping) for r in refusals],
        }

    def add_withdrawals(self, dataset: str, key_context: str, tokens: list[str]) -> int:
        """Record patients (by pseudonym) who withdrew consent; returns how many were new.

        Tokens are kept in the spelling `pseudonym` writes; a patient already recorded under the plain
        32-hex spelling of earlier versions is not new."""
        if not tokens:
            return 0
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        w = withdrawals.c
        fresh = sorted({canonical_token(t) for t in tokens})
        at = _now()
        with self._writing() as conn:
            before = self._withdrawn_count(conn, dataset, key_context)
            for start in range(0, len(fresh), _ROWS_PER_STATEMENT):
                chunk = fresh[start : start + _ROWS_PER_STATEMENT]
                stored = conn.execute(
                    sa.select(w.token).where(
                        w.dataset == dataset,
                        w.key_context == key_context,
                        w.token.in_(token_spellings(chunk)),
                    )
                ).scalars()
                known = {canonical_token(t) for t in stored}
                rows = [
                    {"dataset": dataset, "key_context": key_context, "token": t, "at": at}
                    for t in chunk
                    if t not in known
                ]
                if rows:
                    conn.execute(insert(withdrawals).values(rows).on_conflict_do_nothing())
            return self._withdrawn_count(conn, dataset, key_context) - before

    def withdrawn_since(self, dataset: str, key_context: str, since: str) -> bool:
        """Whether any patient of the dataset withdrew consent at or after `since` (timestamps are to the
        second, so the same second counts: a needless refusal rather than a missed withdrawal)."""
        w = withdrawals.c
        query = sa.select(w.token).where(w.dataset == dataset, w.key_context == key_context, w.at >= since)
        with self._engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    @staticmethod
    def _withdrawn_count(conn: sa.Connection, dataset: str, key_context: str) -> int:
        w = withdrawals.c
        query = sa.select(sa.func.count()).where(w.dataset == dataset, w.key_context == key_context)
        return int(conn.execute(query).scalar_one())

    def withdrawn(self, dataset: str, key_context: str) -> list[str]:
        """Pseudonyms of the patients of a dataset who withdrew consent."""
        w = withdrawals.c
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(w.token).where(w.dataset == dataset, w.key_context == key_context))
            return [r[0] for r in rows]

    def save_request(self, request: StoredRequest) -> None:
        """Insert a new request."""
        with self._writing() as conn:
            conn.execute(requests.insert().values(**_row(request)))

    def update_request(
        self,
        request_id: str,
        *,
        expect: RequestStatus,
        status: RequestStatus,
        reasons: list[str],
        result: dict[str, Any] | None,
        decided_by: str | None,
    ) -> bool:
        """Move a request from `expect` to `status`; False when another steward got there first."""
        with self._writing() as conn:
            done = conn.execute(
                requests.update()
                .where(requests.c.request_id == request_id, requests.c.status == expect)
                .values(
                    status=status,
                    reasons=json.dumps(reasons),
                    result=json.dumps(result) if result is not None else None,
                    decided_by=decided_by,
                    updated_at=_now(),
                )
            )
        return bool(done.rowcount)

    def get_request(self, request_id: str) -> StoredRequest | None:
        """One request by id."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.request_id == request_id)).first()
        return _request(row._mapping) if row is not None else None

    def list_requests(self, status: RequestStatus | None = None, limit: int = 500) -> list[StoredRequest]:
        """Requests, newest first (of one status when given)."""
        query = sa.select(requests).order_by(requests.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(requests.c.status == status)
        with self._engine.connect() as conn:
            return [_request(r._mapping) for r in conn.execute(query)]


def new_request(
    request_id: str,
    principal: dict[str, Any],
    spec: dict[str, Any],
    query_hash: str,
    reasons: list[str],
) -> StoredRequest:
    """A request entering the approval queue."""
    now = _now()
    return StoredRequest(
        request_id=request_id,
        status="pending_approval",
        subject=f"{principal['issuer']}\n{principal['sub']}",
        agreement=str(spec["agreement"]),
        dataset=str(spec["dataset"]),
        kind=str(spec["kind"]),
        query_hash=query_hash,
        principal=principal,
        spec=spec,
        reasons=reasons,
        result=None,
        created_at=now,
        updated_at=now,
        decided_by=None,
    )


def _row(r: StoredRequest) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "status": r.status,
        "subject": r.subject,
        "agreement": r.agreement,
        "dataset": r.dataset,
        "kind": r.kind,
        "query_hash": r.query_hash,
        "principal": json.dumps(r.principal),
        "spec": json.dumps(r.spec),
        "reasons": json.dumps(r.reasons),
        "result": json.dumps(r.result) if r.result is not None else None,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "decided_by": r.decided_by,
    }


def _request(m: Any) -> StoredRequest:
    return StoredRequest(
        request_id=m["request_id"],
        status=m["status"],
        subject=m["subject"],
        agreement=m["agreement"],
        dataset=m["dataset"],
        kind=m["kind"],
        query_hash=m["query_hash"],
        principal=json.loads(m["principal"]),
        spec=json.loads(m["spec"]),
        reasons=json.loads(m["reasons"]),
        result=json.loads(m["result"]) if m["result"] is not None else None,
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        decided_by=m["decided_by"],
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    sqlite_wal(cursor)
    # NORMAL in WAL mode survives a crash of the gateway, not of the machine: the state is operational
    # (queues, counters); what happened is recorded durably in the audit log, which syncs every append.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
