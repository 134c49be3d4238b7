"""The nonce ledger: a nonce is accepted once, shared by every worker on the same state database."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.federation.replay import PURGE_EVERY_S, NonceLedger


def test_a_nonce_is_accepted_once(tmp_path: Path) -> None:
    ledger = NonceLedger(f"sqlite:///{tmp_path / 'state.db'}")
    expires = int(time.time()) + 60
    assert ledger.claim("site-de", "n" * 24, expires)
    assert not ledger.claim("site-de", "n" * 24, expires)
    assert ledger.claim("site-fr", "n" * 24, expires)  # nonces are per peer
    ledger.close()


def test_workers_on_one_database_share_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first, second = NonceLedger(url), NonceLedger(url)
    expires = int(time.time()) + 60
    assert first.claim("site-de", "m" * 24, expires)
    assert not second.claim("site-de", "m" * 24, expires)
    first.close()
    second.close()


def test_expired_nonces_are_forgotten(tmp_path: Path) -> None:
    ledger = NonceLedger(f"sqlite:///{tmp_path / 'state.db'}")
    now = time.time()
    assert ledger.claim("site-de", "a" * 24, int(now) + 1, now=now)
    assert ledger.claim("site-de", "b" * 24, int(now) + 100, now=now)
    assert ledger.size() == 2
    assert ledger.claim("site-de", "c" * 24, int(now) + 200, now=now + PURGE_EVERY_S + 50)
    assert ledger.size() == 2
    ledger.close()


def test_the_ledger_works_on_postgresql(pg_url: str) -> None:
    ledger = NonceLedger(pg_url)
    expires = int(time.time()) + 60
    assert ledger.claim("site-de", "p" * 24, expires)
    assert not ledger.claim("site-de", "p" * 24, expires)
    ledger.close()
