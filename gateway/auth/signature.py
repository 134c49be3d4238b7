"""Compact JWS parsing and signature checks: the algorithm allow-list and the key type it demands.

The header is read before the signature is checked only to find the key; no claim is trusted until the
signature over it has verified with a key of the type the algorithm requires. `none` and every HMAC
algorithm are outside any allow-list this module accepts, so an attacker who signs HS256 with the
issuer's public key bytes as the secret never reaches a verifier.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc._rfc7515.model import JWSAlgModel
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from gateway.auth.bearer import MAX_TOKEN_BYTES
from gateway.auth.errors import BadSignature, MalformedToken, UnsupportedAlgorithm
from gateway.lru import LruMap

SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
_MIN_RSA_BITS = 2048
# RFC 7519 §5.1 `JWT`, RFC 9068 `at+jwt` (access tokens); any other type is a different kind of token.
_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})


@dataclass(frozen=True)
class UnverifiedToken:
    """A parsed compact JWS whose signature has not been checked yet: only `alg`, `kid` and `iss` route."""

    header: dict[str, Any]
    claims: dict[str, Any]

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep different duplicates would read different claims from one signed token.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate member")
        out[key] = value
    return out


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    if not segment or "=" in segment:
        raise MalformedToken(f"the token's {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (binascii.Error, ValueError):
        raise MalformedToken(
            f"the token's {what} is not base64url-encoded JSON without duplicate members"
        ) from None
    except RecursionError:
        # The decoder recurses once per level of nesting, so a segment of a few kilobytes of brackets
        # reaches the interpreter's recursion limit; no token an identity provider issues nests so deep.
        raise MalformedToken(f"the token's {what} nests JSON too deeply") from None
    if not isinstance(value, dict):
        raise MalformedToken(f"the token's {what} is not a JSON object")
    return value


def parse_token(token: str) -> UnverifiedToken:
    """Split and decode a compact JWS; MalformedToken when it is not one."""
    if len(token) > MAX_TOKEN_BYTES:
        raise MalformedToken(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("the token is not a compact JWS (three dot-separated parts)")
    header = _segment_json(parts[0], "header")
    claims = _segment_json(parts[1], "payload")
    if not isinstance(header.get("alg"), str):
        raise MalformedToken("the token header has no 'alg'")
    if "kid" in header and not isinstance(header["kid"], str):
        raise MalformedToken("the token header's 'kid' is not a string")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TOKEN_TYPES):
        raise MalformedToken("the token header's 'typ' is not JWT or at+jwt")
    if "crit" in header:
        raise MalformedToken("the token header marks extensions critical that this gateway does not know")
    return UnverifiedToken(header=header, claims=claims)


def check_algorithm(alg: str, allowed: Collection[str]) -> None:
    """UnsupportedAlgorithm unless `alg` is an asymmetric algorithm on the allow-list."""
    if alg not in SUPPORTED_ALGORITHMS or alg not in allowed:
        shown = alg if alg.isascii() and alg.isalnum() and len(alg) <= 16 else "(unreadable)"
        raise UnsupportedAlgorithm(
            f"token algorithm {shown} is not accepted (allowed: {', '.join(sorted(allowed))})"
        )


def key_fits(alg: str, key: Key) -> bool:
    """True when `key` is the kind of key `alg` signs with, and the key itself allows that use."""
    if key.get("use") not in (None, "sig") or key.alg not in (None, alg):
        return False
    ops = key.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return False
    if alg == "RS256":
        return isinstance(key, RSAKey) and key.raw_value.key_size >= _MIN_RSA_BITS
    if alg == "ES256":
        return isinstance(key, ECKey) and key.curve_name == "P-256"
    if alg == "EdDSA":
        return isinstance(key, OKPKey) and key.curve_name in ("Ed25519", "Ed448")
    return False


class _AllowListRegistry(JWSRegistry):
    """joserfc's registry restricted to one algorithm, without its deprecation warning for `EdDSA`.

    RFC 9864 deprecates the polymorphic `EdDSA` name in favour of `Ed25519`, and joserfc warns when it is
    used; identity providers still sign with it and the site's allow-list names it, so the warning would
    only turn every EdDSA token into an error under `filterwarnings = error`.
    """

    def get_alg(self, name: str) -> JWSAlgModel:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithm(f"token algorithm {name} is not accepted")
        return self.algorithms[name]


def registry_for(alg: str) -> JWSRegistry:
    """A joserfc registry that accepts exactly `alg` (used to sign too, by the dev issuer and tests)."""
    return _AllowListRegistry(algorithms=[alg], strict_check_header=False)


class _VerifiedSignatures:
    """Tokens whose signature a key verified, with that key: a bounded, thread-safe memo.

    Whether a key verifies the exact bytes of a token never changes, and a researcher sends the same
    token with every request until it expires; the public-key check and joserfc's parsing cost a tenth of
    a small query. Only the signature is remembered: every claim (expiry included) is checked on each
    use. The entry holds the key object itself, so it matches only while the key source still hands out
    that same key (a key that rotated out of the JWKS never matches again)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._keys = LruMap[str, Key](max_entries)

    def holds(self, token: str, key: Key) -> bool:
        return self._keys.get(token) is key

    def add(self, token: str, key: Key) -> None:
        self._keys.put(token, key)


_VERIFIED = _VerifiedSignatures()


def verify_signature(token: str, unverified: UnverifiedToken, key: Key) -> None:
    """BadSignature unless `key` verifies the token; UnsupportedAlgorithm if the key cannot sign `alg`."""
    alg = unverified.alg
    if not key_fits(alg, key):
        raise UnsupportedAlgorithm(f"token algorithm {alg} does not match the type of the key it names")
    if _VERIFIED.holds(token, key):
        return
    try:
        jws.deserialize_compact(token, key, registry=registry_for(alg))
    except BadSignatureError:
        raise BadSignature("the token signature does not verify") from None
    except JoseError:
        raise MalformedToken("the token is not a well-formed JWS") from None
    except (ValueError, TypeError):
        raise BadSignature("the token signature does not verify") from None
    _VERIFIED.add(token, key)
