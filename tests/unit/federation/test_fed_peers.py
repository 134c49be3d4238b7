"""PeerLink: the registry read from settings, and signing only with a key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.federation.peers import PeerLink
from gateway.federation.signing import (
    HEADER,
    PeerKeyError,
    generate_peer_key,
    public_key_b64,
    verify_assertion,
)
from gateway.settings import PeerSettings, SiteSettings


def _settings(tmp_path: Path, **extra: object) -> SiteSettings:
    return SiteSettings(
        site_id="site-de",
        jurisdiction="DE",
        store_url="duckdb:///:memory:",
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        policy_dir=tmp_path,
        master_key_env="FEDGATE_TEST_UNUSED",
        log_key_file=tmp_path / "log.key",
        **extra,
    )  # type: ignore[arg-type]


def _peer(key: str = "") -> PeerSettings:
    request_key = key or public_key_b64(Ed25519PrivateKey.generate().public_key())
    return PeerSettings(id="site-fr", url="http://127.0.0.1:9", request_key=request_key, log_key="x+1+A")


def test_a_site_with_a_key_signs_for_its_peers(tmp_path: Path) -> None:
    key = generate_peer_key(tmp_path / "peer.key")
    link = PeerLink(_settings(tmp_path, peer_key_file=tmp_path / "peer.key", peers=(_peer(),)))
    try:
        headers = link.sign("site-fr", "POST", "/v1/queries", b"{}")
        verified = verify_assertion(
            headers[HEADER],
            site_id="site-fr",
            peers={"site-de": key.public_key()},
            method="POST",
            path="/v1/queries",
            body=b"{}",
        )
        assert verified.peer == "site-de"
        assert set(link.keys) == {"site-fr"}
    finally:
        asyncio.run(link.aclose())


def test_without_a_key_file_a_site_answers_peers_but_cannot_coordinate(tmp_path: Path) -> None:
    link = PeerLink(_settings(tmp_path, peer_key_file=tmp_path / "missing.key", peers=(_peer(),)))
    try:
        with pytest.raises(PeerKeyError, match="no peer_key_file"):
            link.sign("site-fr", "POST", "/v1/queries", b"{}")
    finally:
        asyncio.run(link.aclose())


def test_a_malformed_request_key_stops_start_up(tmp_path: Path) -> None:
    generate_peer_key(tmp_path / "peer.key")
    with pytest.raises(ValueError, match=r"peers\.site-fr\.request_key"):
        PeerLink(_settings(tmp_path, peer_key_file=tmp_path / "peer.key", peers=(_peer("AAAA"),)))
