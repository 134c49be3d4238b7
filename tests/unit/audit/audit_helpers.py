"""Helpers shared by the audit unit tests: sample events and digests."""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

from audit.entry import Actor
from audit.log import AuditLog

ORIGIN = "fedgate.example/site-test"


def digest(text: str) -> str:
    """A well-formed payload digest of some text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def sample(i: int) -> dict[str, Any]:
    """A varied, valid payload for entry number i: every three entries are one query's decision (allow),
    run and release, as a gateway writes them (`sample_request` names the request)."""
    query = digest(f"q{i // 3}")
    if i % 3 == 0:
        return {"query_hash": query, "decision": "allow", "reasons": [f"dsa clause {i % 7} allows"],
                "policy_bundle": digest("bundle")}  # fmt: skip
    if i % 3 == 1:
        return {"query_hash": query, "dataset_digest": digest("ds"), "rows": i}
    return {"query_hash": query, "result_hash": digest(f"r{i}"), "cells": i % 50}


def sample_request(i: int) -> str:
    return f"req-{i // 3}"


def sample_type(i: int) -> str:
    return ("query.decided", "query.executed", "query.released")[i % 3]


def append_samples(log: AuditLog, n: int) -> None:
    """Append n varied events, numbered on from the log's size."""
    actor = Actor("researcher-1", "uni-example")
    for i in range(log.size, log.size + n):
        log.append(sample_type(i), actor=actor, request_id=sample_request(i), payload=sample(i))


def commit_counter(log: AuditLog) -> list[int]:
    """A one-item list that counts the transactions the log's writer commits from now on."""
    commits = [0]

    @sa.event.listens_for(log._engines.writer, "commit")
    def count(_conn: Any) -> None:
        commits[0] += 1

    return commits
