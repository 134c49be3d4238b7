"""Peer authentication: a short-lived Ed25519-signed JWT assertion bound to one request.

The coordinator puts `Fedgate-Peer-Assertion: <compact JWS>` on every request it sends to a peer. Its
claims bind the assertion to that request: `iss` (coordinator site id), `aud` (target site id), `iat`,
`exp` (at most 60 s later), `jti` (a random nonce the peer remembers until `exp`), `htm` and `htu` (HTTP
method and path) and `bd` (base64url SHA-256 of the exact body bytes). The researcher's own bearer token
travels beside it unchanged; nothing in the assertion says who the researcher is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from audit.errors import LogKeyError
from audit.keys import generate_log_key, load_log_key
from gateway.auth.signature import registry_for

HEADER = "Fedgate-Peer-Assertion"
ASSERTION_TYPE = "fedgate-peer+jwt"
MAX_LIFETIME_S = 60
CLOCK_SKEW_S = 5
_ALG = "EdDSA"
_MAX_ASSERTION_BYTES = 4096


class PeerAuthError(Exception):
    """A peer request's assertion is refused; `reason` is a short code for the audit log."""

    reason = "rejected"

    def __init__(self, message: str, peer: str = "unknown") -> None:
        super().__init__(message)
        self.peer = peer


class MalformedAssertion(PeerAuthError):
    """Not a compact JWS with the expected header and claims."""

    reason = "malformed"


class UnknownPeer(PeerAuthError):
    """`iss` is not in this site's `[[peers]]` registry."""

    reason = "unknown_peer"


class BadPeerSignature(PeerAuthError):
    """The signature does not verify with the registered key of `iss`."""

    reason = "bad_signature"


class StaleAssertion(PeerAuthError):
    """Expired, issued in the future, or valid for longer than MAX_LIFETIME_S."""

    reason = "stale"


class ReplayedAssertion(PeerAuthError):
    """The `jti` was already used."""

    reason = "replayed"


class RequestMismatch(PeerAuthError):
    """The assertion was made for another audience, method, path or body."""

    reason = "request_mismatch"


class PeerKeyError(Exception):
    """The peer signing key file is missing, unreadable, too open or not Ed25519."""


@dataclass(frozen=True)
class VerifiedAssertion:
    """A peer assertion whose signature, time window and request binding verified (replay is separate)."""

    peer: str
    jti: str
    expires_at: int


def body_digest(body: bytes) -> str:
    """base64url (unpadded) SHA-256 of the body bytes."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The form `[[peers]] request_key` holds: base64 of the raw 32-byte public key."""
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A `request_key` value as a key (ValueError when it is not 32 bytes of base64)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("request_key is not base64") from None
    if len(raw) != 32:
        raise ValueError("request_key is not a raw 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_peer_key(path: Path) -> Ed25519PrivateKey:
    """Create the peer signing key file (PKCS#8 PEM, mode 0600); never overwrites an existing file.

    The file is the same kind as the audit log's key, so the audit package writes and reads both."""
    try:
        return generate_log_key(path)
    except LogKeyError as exc:
        raise PeerKeyError(str(exc)) from None


def load_peer_key(path: Path) -> Ed25519PrivateKey:
    """Read the peer signing key; it must be readable by its owner only."""
    if not path.exists():
        raise PeerKeyError(f"{path}: key file not found (create it with `fedgate peer keygen`)")
    try:
        return load_log_key(path)
    except LogKeyError as exc:
        raise PeerKeyError(str(exc)) from None


class PeerSigner:
    """Signs this site's requests to its peers."""

    def __init__(self, site_id: str, key: Ed25519PrivateKey, *, lifetime_s: int = 30) -> None:
        if not 0 < lifetime_s <= MAX_LIFETIME_S:
            raise ValueError(f"lifetime_s must be in 1..{MAX_LIFETIME_S}")
        self.site_id = site_id
        self._key = OKPKey.import_key(key)
        self._lifetime = lifetime_s

    def assertion(
        self, audience: str, method: str, path: str, body: bytes, *, now: float | None = None, **extra: Any
    ) -> str:
        """A fresh assertion for one request (`extra` claims exist for tests of lying coordinators)."""
        issued = int(time.time() if now is None else now)
        claims = {
            **extra,
            "iss": self.site_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + self._lifetime,
            "jti": secrets.token_urlsafe(18),
            "htm": method.upper(),
            "htu": path,
            "bd": body_digest(body),
        }
        payload = json.dumps(claims, separators=(",", ":")).encode()
        header = {"alg": _ALG, "typ": ASSERTION_TYPE}
        return jws.serialize_compact(header, payload, self._key, registry=registry_for(_ALG))


def _unverified_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(token) > _MAX_ASSERTION_BYTES or len(parts) != 3:
        raise MalformedAssertion("the peer assertion is not a compact JWS")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise MalformedAssertion("the peer assertion is not base64url JSON") from None
    except RecursionError:
        # The decoder recurses once per level of nesting: 4 KiB of brackets reach the recursion limit.
        raise MalformedAssertion("the peer assertion nests JSON too deeply") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise MalformedAssertion("the peer assertion's header or claims are not JSON objects")
    if header.get("alg") != _ALG or header.get("typ") != ASSERTION_TYPE or "crit" in header:
        raise MalformedAssertion(f"the peer assertion must be an {_ALG} JWS of type {ASSERTION_TYPE}")
    return claims


def verify_assertion(
    token: str,
    *,
    site_id: str,
    peers: Mapping[str, Ed25519PublicKey],
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
) -> VerifiedAssertion:
    """Check signature, issuer, audience, time window and request binding; raise a PeerAuthError."""
    claims = _unverified_claims(token)
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in peers:
        raise UnknownPeer("the assertion's issuer is not a registered peer of this site")
    try:
        verified = jws.deserialize_compact(
            token, OKPKey.import_key(peers[issuer]), registry=registry_for(_ALG)
        )
    except (JoseError, ValueError, TypeError):
        raise BadPeerSignature("the peer assertion's signature does not verify", issuer) from None
    signed = json.loads(verified.payload)  # the same bytes as above, now authenticated
    now_s = time.time() if now is None else now
    iat, exp, jti = signed.get("iat"), signed.get("exp"), signed.get("jti")
    if (
        not isinstance(iat, int)
        or not isinstance(exp, int)
        or not isinstance(jti, str)
        or not 16 <= len(jti) <= 64
    ):
        raise MalformedAssertion("the peer assertion lacks integer iat/exp or a jti nonce", issuer)
    if exp - iat > MAX_LIFETIME_S or exp <= iat:
        raise StaleAssertion(f"the peer assertion is valid for more than {MAX_LIFETIME_S} s", issuer)
    if iat > now_s + CLOCK_SKEW_S:
        raise StaleAssertion("the peer assertion was issued in the future", issuer)
    if now_s >= exp + CLOCK_SKEW_S:
        raise StaleAssertion("the peer assertion has expired", issuer)
    if signed.get("aud") != site_id:
        raise RequestMismatch("the peer assertion was made for another site", issuer)
    if signed.get("htm") != method.upper() or signed.get("htu") != path:
        raise RequestMismatch("the peer assertion was made for another method or path", issuer)
    if signed.get("bd") != body_digest(body):
        raise RequestMismatch("the request body is not the one the peer assertion signed", issuer)
    return VerifiedAssertion(peer=issuer, jti=jti, expires_at=exp + CLOCK_SKEW_S)
