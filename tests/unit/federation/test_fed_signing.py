"""Peer assertions: what verifies, and each way a forged, stale or misdirected one is refused."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.jwk import OKPKey

from gateway.auth.signature import registry_for
from gateway.federation.signing import (
    MAX_LIFETIME_S,
    BadPeerSignature,
    MalformedAssertion,
    PeerKeyError,
    PeerSigner,
    RequestMismatch,
    StaleAssertion,
    UnknownPeer,
    body_digest,
    generate_peer_key,
    load_peer_key,
    parse_public_key,
    public_key_b64,
    verify_assertion,
)

BODY = b'{"kind":"count"}'
KEY = Ed25519PrivateKey.generate()
PEERS: dict[str, Ed25519PublicKey] = {"site-de": KEY.public_key()}


def _verify(token: str, **overrides: object) -> object:
    args: dict[str, object] = {
        "site_id": "site-fr",
        "peers": PEERS,
        "method": "POST",
        "path": "/v1/queries",
        "body": BODY,
    }
    args.update(overrides)
    return verify_assertion(token, **args)  # type: ignore[arg-type]


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_fresh_assertion_verifies() -> None:
    token = PeerSigner("site-de", KEY).assertion("site-fr", "post", "/v1/queries", BODY)
    verified = _verify(token)
    assert verified.peer == "site-de"  # type: ignore[attr-defined]
    assert verified.expires_at <= time.time() + MAX_LIFETIME_S + 10  # type: ignore[attr-defined]


def test_each_assertion_has_its_own_nonce() -> None:
    signer = PeerSigner("site-de", KEY)
    tokens = [signer.assertion("site-fr", "POST", "/v1/queries", BODY) for _ in range(5)]
    assert len({_verify(t).jti for t in tokens}) == 5  # type: ignore[attr-defined]


def test_unknown_issuer_and_wrong_key() -> None:
    with pytest.raises(UnknownPeer):
        _verify(PeerSigner("site-zz", KEY).assertion("site-fr", "POST", "/v1/queries", BODY))
    with pytest.raises(BadPeerSignature) as caught:
        _verify(
            PeerSigner("site-de", Ed25519PrivateKey.generate()).assertion(
                "site-fr", "POST", "/v1/queries", BODY
            )
        )
    assert caught.value.peer == "site-de"


def test_a_changed_claim_breaks_the_signature() -> None:
    header, _claims, signature = (
        PeerSigner("site-de", KEY).assertion("site-fr", "POST", "/v1/queries", BODY).split(".")
    )
    forged = {
        "iss": "site-de",
        "aud": "site-fr",
        "iat": int(time.time()),
        "exp": int(time.time()) + 30,
        "jti": "a" * 24,
        "htm": "POST",
        "htu": "/v1/queries",
        "bd": "x",
    }
    with pytest.raises(BadPeerSignature):
        _verify(f"{header}.{_b64(forged)}.{signature}")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "typ": "fedgate-peer+jwt"},
        {"alg": "HS256", "typ": "fedgate-peer+jwt"},
        {"alg": "EdDSA", "typ": "JWT"},
        {"alg": "EdDSA", "typ": "fedgate-peer+jwt", "crit": ["x"]},
    ],
)
def test_other_algorithms_and_types_are_malformed(header: dict[str, object]) -> None:
    token = f"{_b64(header)}.{_b64({'iss': 'site-de'})}.c2ln"
    with pytest.raises(MalformedAssertion):
        _verify(token)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.!!.!!", "x" * 5000])
def test_garbage_is_malformed(token: str) -> None:
    with pytest.raises(MalformedAssertion):
        _verify(token)


def test_expired_future_and_long_lived_assertions_are_stale() -> None:
    signer = PeerSigner("site-de", KEY, lifetime_s=MAX_LIFETIME_S)
    with pytest.raises(StaleAssertion, match="expired"):
        _verify(signer.assertion("site-fr", "POST", "/v1/queries", BODY, now=time.time() - 120))
    with pytest.raises(StaleAssertion, match="future"):
        _verify(signer.assertion("site-fr", "POST", "/v1/queries", BODY, now=time.time() + 120))
    # A peer that signs a longer lifetime than the protocol allows is refused even when fresh.
    now = int(time.time())
    claims = {
        "iss": "site-de",
        "aud": "site-fr",
        "iat": now,
        "exp": now + 3600,
        "jti": "j" * 24,
        "htm": "POST",
        "htu": "/v1/queries",
        "bd": body_digest(BODY),
    }
    token = jws.serialize_compact(
        {"alg": "EdDSA", "typ": "fedgate-peer+jwt"},
        json.dumps(claims).encode(),
        OKPKey.import_key(KEY),
        registry=registry_for("EdDSA"),
    )
    with pytest.raises(StaleAssertion, match="more than"):
        _verify(token)
    with pytest.raises(ValueError, match="lifetime_s"):
        PeerSigner("site-de", KEY, lifetime_s=MAX_LIFETIME_S + 1)


def test_an_assertion_is_bound_to_audience_method_path_and_body() -> None:
    token = PeerSigner("site-de", KEY).assertion("site-fr", "POST", "/v1/queries", BODY)
    with pytest.raises(RequestMismatch, match="another site"):
        _verify(token, site_id="site-nl")
    with pytest.raises(RequestMismatch, match="method or path"):
        _verify(token, method="GET")
    with pytest.raises(RequestMismatch, match="method or path"):
        _verify(token, path="/v1/federated-queries")
    with pytest.raises(RequestMismatch, match="body"):
        _verify(token, body=BODY + b" ")


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    key = generate_peer_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_key_b64(load_peer_key(path).public_key()) == public_key_b64(key.public_key())
    with pytest.raises(PeerKeyError, match="refusing to overwrite"):
        generate_peer_key(path)
    path.chmod(0o644)
    with pytest.raises(PeerKeyError, match="chmod 600"):
        load_peer_key(path)
    with pytest.raises(PeerKeyError, match="not found"):
        load_peer_key(tmp_path / "missing.key")
    (tmp_path / "bad.key").write_text("not a key")
    (tmp_path / "bad.key").chmod(0o600)
    with pytest.raises(PeerKeyError, match="PKCS#8"):
        load_peer_key(tmp_path / "bad.key")


def test_public_key_text_round_trips_and_rejects_junk() -> None:
    text = public_key_b64(KEY.public_key())
    assert public_key_b64(parse_public_key(text)) == text
    with pytest.raises(ValueError, match="base64"):
        parse_public_key("***")
    with pytest.raises(ValueError, match="32-byte"):
        parse_public_key(base64.b64encode(b"short").decode())
