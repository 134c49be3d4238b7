"""Fixtures for the audit tests: fresh log keys, a log on a temporary SQLite file, sample events."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.entry import Actor
from audit.log import AuditLog

ORIGIN = "fedgate.example/site-test"


def digest(text: str) -> str:
    """A well-formed payload digest of some text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def sample(i: int) -> dict[str, Any]:
    """A varied, valid payload for entry number i."""
    if i % 3 == 0:
        return {"query_hash": digest(f"q{i}"), "decision": "allow", "reasons": [f"dsa clause {i % 7} allows"],
                "policy_bundle": digest("bundle")}  # fmt: skip
    if i % 3 == 1:
        return {"query_hash": digest(f"q{i}"), "dataset_digest": digest("ds"), "rows": i}
    return {"query_hash": digest(f"q{i}"), "result_hash": digest(f"r{i}"), "cells": i % 50}


def sample_type(i: int) -> str:
    return ("query.decided", "query.executed", "query.released")[i % 3]


def append_samples(log: AuditLog, n: int) -> None:
    """Append n varied events."""
    actor = Actor("researcher-1", "uni-example")
    for i in range(n):
        log.append(sample_type(i), actor=actor, request_id=f"req-{i}", payload=sample(i))


@pytest.fixture
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def log(tmp_path: Path, log_key: Ed25519PrivateKey) -> Iterator[AuditLog]:
    with AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}", ORIGIN, log_key, checkpoint_interval_s=None) as opened:
        yield opened
