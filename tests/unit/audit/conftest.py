"""Fixtures for the audit tests: a fresh log key and a log on a temporary SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_helpers import ORIGIN
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.log import AuditLog


@pytest.fixture
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def log(tmp_path: Path, log_key: Ed25519PrivateKey) -> Iterator[AuditLog]:
    with AuditLog.open(
        f"sqlite:///{tmp_path / 'audit.db'}", ORIGIN, log_key, checkpoint_interval_s=None
    ) as opened:
        yield opened
