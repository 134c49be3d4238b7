"""Registered-claim checks (iss, aud, exp, nbf, iat) and the identity claims a Principal is made of."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from connectors.utf8 import is_text
from gateway.auth.errors import (
    BadClaim,
    IssuedInFuture,
    MissingClaim,
    TokenExpired,
    TokenNotYetValid,
    TokenTooOld,
    WrongAudience,
    WrongIssuer,
)
from gateway.auth.jwks import normalize_issuer
from gateway.countries import is_country

MAX_NAME = 256  # the policy input's Name bound (gateway.decision.models)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named `path` itself when the token has one (a namespaced claim such as
    `https://idp.example/roles` holds dots), else the value at `path` read as a dotted path
    (`realm_access.roles`); None when any step is missing."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _time(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise MissingClaim(name)
        return None
    # Python's JSON parser reads NaN and Infinity; an `exp` of Infinity would never expire. An integer too
    # large for a float (10**400) is no date either.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or abs(value) > MAX_TIME
        or not math.isfinite(value)
    ):
        raise BadClaim(name, "a NumericDate (seconds since the epoch)")
    return float(value)


MAX_TIME = 253_402_300_799
"""9999-12-31T23:59:59Z: the last NumericDate any clock or date library here can hold."""


def check_issuer(claims: Mapping[str, Any], expected: str) -> None:
    iss = claims.get("iss")
    if iss is None:
        raise MissingClaim("iss")
    if not isinstance(iss, str) or normalize_issuer(iss) != normalize_issuer(expected):
        raise WrongIssuer(f"the token was not issued by {expected}")


def check_audience(claims: Mapping[str, Any], expected: str) -> None:
    aud = claims.get("aud")
    if aud is None:
        raise MissingClaim("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise BadClaim("aud", "a string or a list of strings")
    if expected not in audiences:
        raise WrongAudience(f"the token is not meant for audience {expected}")


def check_times(claims: Mapping[str, Any], now: float, leeway_s: float, max_age_s: float) -> float:
    """Check exp, nbf and iat against `now`; returns exp."""
    exp = _time(claims, "exp", required=True)
    nbf = _time(claims, "nbf", required=False)
    iat = _time(claims, "iat", required=True)
    assert exp is not None and iat is not None
    if now > exp + leeway_s:
        raise TokenExpired("the token has expired")
    if nbf is not None and now + leeway_s < nbf:
        raise TokenNotYetValid("the token is not valid yet (nbf is in the future)")
    if now + leeway_s < iat:
        raise IssuedInFuture("the token's issue time is in the future; check the clocks")
    if now - iat > max_age_s:
        raise TokenTooOld(f"the token was issued more than {max_age_s:g} s ago")
    return exp


def name_claim(claims: Mapping[str, Any], path: str) -> str:
    """A required non-empty string claim of at most 256 characters."""
    value = claim_at(claims, path)
    if value is None:
        raise MissingClaim(path)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME or not is_text(value):
        raise BadClaim(path, f"a non-empty string of at most {MAX_NAME} characters")
    return value


def country_claim(claims: Mapping[str, Any], path: str) -> str:
    value = claim_at(claims, path)
    if value is None:
        raise MissingClaim(path)
    if not isinstance(value, str) or not is_country(value):
        raise BadClaim(path, "an ISO 3166-1 alpha-2 country code such as 'DE'")
    return value


def roles_claim(claims: Mapping[str, Any], path: str) -> frozenset[str]:
    """The roles at a dotted path; absent means no roles (the role check then forbids, with its reason)."""
    value = claim_at(claims, path)
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(
        isinstance(r, str) and r.strip() and len(r) <= MAX_NAME and is_text(r) for r in value
    ):
        raise BadClaim(path, "a list of role names")
    return frozenset(value)
