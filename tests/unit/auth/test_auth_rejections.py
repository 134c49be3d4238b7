"""Every way a token is refused, with the typed error it gets and a reason that never leaks the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from auth_helpers import oidc_for, run
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import (
    AuthError,
    BadClaim,
    BadSignature,
    IssuedInFuture,
    MalformedToken,
    MissingClaim,
    NotAuthenticated,
    TokenExpired,
    TokenNotYetValid,
    TokenTooOld,
    TokenValidator,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
)

SUB = "subject-marker-7f3a"
ORG = "org-marker-19bc"


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(idp: LoopbackTestIssuer, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": idp.issuer_url, "aud": idp.audience, "sub": SUB, "org": ORG, "country": "DE"}
    return {**base, "roles": ["researcher"], "iat": now, "exp": now + 300, **extra}


def unsigned(idp: LoopbackTestIssuer) -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(idp))}."


def hs256_with_public_key(idp: LoopbackTestIssuer) -> str:
    # The classic key-confusion attack: HMAC keyed with the issuer's public key, which anyone can fetch.
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': idp.kid('RS256')})}.{b64(claims(idp))}"
    mac = hmac.new(idp.public_pem("RS256"), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def alg_swapped_onto_key(idp: LoopbackTestIssuer, alg: str, key_alg: str) -> str:
    """A token whose header claims `alg` but names the kid of the `key_alg` key."""
    _header, payload, signature = idp.sign(claims(idp), alg=alg).split(".")
    forged = {"alg": alg, "typ": "JWT", "kid": idp.kid(key_alg)}
    return f"{b64(forged)}.{payload}.{signature}"


def tampered(idp: LoopbackTestIssuer) -> str:
    header, _payload, signature = idp.token(sub=SUB, org=ORG).split(".")
    return f"{header}.{b64(claims(idp, roles=['steward']))}.{signature}"


def with_header(idp: LoopbackTestIssuer, **header: Any) -> str:
    """A token whose header gains `header` after signing (joserfc would refuse to sign some of them)."""
    _head, payload, signature = idp.sign(claims(idp)).split(".")
    return f"{b64({'alg': 'RS256', 'kid': idp.kid('RS256'), **header})}.{payload}.{signature}"


def duplicate_member(idp: LoopbackTestIssuer) -> str:
    token = idp.sign(claims(idp))
    head, _payload, signature = token.split(".")
    raw = json.dumps(claims(idp))[:-1] + ', "sub": "someone-else"}'
    return f"{head}.{b64(raw.encode())}.{signature}"


def signed_by_other_issuer(idp: LoopbackTestIssuer) -> str:
    with LoopbackTestIssuer() as other:
        return other.sign(claims(idp), kid=idp.kid("RS256"))


def at(offset_s: int) -> int:
    """A time this far from when the token is made (not from when the module was imported: a long suite
    reaches these cases many minutes after collecting them)."""
    return int(time.time()) + offset_s


Case = tuple[str, Callable[[LoopbackTestIssuer], str], type[AuthError], dict[str, Any]]
CASES: list[Case] = [
    ("alg none", unsigned, UnsupportedAlgorithm, {}),
    ("alg none with a signature", lambda i: unsigned(i) + "c2ln", UnsupportedAlgorithm, {}),
    ("HS256 keyed with the RSA public key", hs256_with_public_key, UnsupportedAlgorithm, {}),
    ("alg outside the configured list", lambda i: i.sign(claims(i), alg="ES256"), UnsupportedAlgorithm,
     {"algorithms": ("RS256",)}),
    ("ES256 header on the RSA key", lambda i: alg_swapped_onto_key(i, "ES256", "RS256"),
     UnsupportedAlgorithm, {}),
    ("EdDSA header on the EC key", lambda i: alg_swapped_onto_key(i, "EdDSA", "ES256"),
     UnsupportedAlgorithm, {}),
    ("RS384 is not on any list", lambda i: f"{b64({'alg': 'RS384'})}.{b64(claims(i))}.c2ln",
     UnsupportedAlgorithm, {}),
    ("payload changed after signing", tampered, BadSignature, {}),
    ("signed by another issuer's key under our kid", signed_by_other_issuer, BadSignature, {}),
    ("iss of another provider", lambda i: i.sign(claims(i, iss="https://evil.example")), WrongIssuer, {}),
    ("no iss", lambda i: i.token(sub=SUB, omit=["iss"]), WrongIssuer, {}),
    ("wrong aud", lambda i: i.token(sub=SUB, aud="another-service"), WrongAudience, {}),
    ("aud list without us", lambda i: i.token(sub=SUB, aud=["a", "b"]), WrongAudience, {}),
    ("no aud", lambda i: i.token(sub=SUB, omit=["aud"]), MissingClaim, {}),
    ("aud not a string", lambda i: i.token(sub=SUB, aud=7), BadClaim, {}),
    ("expired", lambda i: i.token(sub=SUB, iat=at(-900), exp=at(-600)), TokenExpired, {}),
    ("nbf in the future", lambda i: i.token(sub=SUB, nbf=at(600)), TokenNotYetValid, {}),
    ("iat in the future", lambda i: i.token(sub=SUB, iat=at(600), exp=at(900)), IssuedInFuture, {}),
    ("iat too old", lambda i: i.token(sub=SUB, iat=at(-3600)), TokenTooOld, {"max_token_age_s": 600}),
    ("no exp", lambda i: i.token(sub=SUB, omit=["exp"]), MissingClaim, {}),
    ("no iat", lambda i: i.token(sub=SUB, omit=["iat"]), MissingClaim, {}),
    ("exp not a number", lambda i: i.token(sub=SUB, exp="tomorrow"), BadClaim, {}),
    ("exp a boolean", lambda i: i.token(sub=SUB, exp=True), BadClaim, {}),
    ("exp Infinity", lambda i: i.token(sub=SUB, exp=float("inf")), BadClaim, {}),
    ("iat NaN", lambda i: i.token(sub=SUB, iat=float("nan")), BadClaim, {}),
    ("exp past any float", lambda i: i.token(sub=SUB, exp=10**400), BadClaim, {}),
    ("nbf past any float", lambda i: i.token(sub=SUB, nbf=-(10**400)), BadClaim, {}),
    ("iat after the year 9999", lambda i: i.token(sub=SUB, iat=10**12), BadClaim, {}),
    ("sub a lone surrogate", lambda i: i.token(sub=SUB + "\ud800"), BadClaim, {}),
    ("org a lone surrogate", lambda i: i.token(sub=SUB, org="\udfff"), BadClaim, {}),
    ("role a lone surrogate", lambda i: i.sign(claims(i, roles=["researcher\ud800"])), BadClaim, {}),
    ("no sub", lambda i: i.token(omit=["sub"]), MissingClaim, {}),
    ("empty sub", lambda i: i.token(sub=" "), BadClaim, {}),
    ("sub too long", lambda i: i.token(sub="s" * 300), BadClaim, {}),
    ("no org", lambda i: i.token(sub=SUB, omit=["org"]), MissingClaim, {}),
    ("country lower-case", lambda i: i.token(sub=SUB, org=ORG, country="de"), BadClaim, {}),
    ("country not a country", lambda i: i.token(sub=SUB, org=ORG, country="XX"), BadClaim, {}),
    ("country not a string", lambda i: i.sign(claims(i, country=49)), BadClaim, {}),
    ("no country", lambda i: i.token(sub=SUB, org=ORG, omit=["country"]), MissingClaim, {}),
    ("roles a string", lambda i: i.sign(claims(i, roles="researcher")), BadClaim, {}),
    ("roles with a non-string", lambda i: i.sign(claims(i, roles=["researcher", 3])), BadClaim, {}),
    ("visas not a list", lambda i: i.token(sub=SUB, ga4gh_passport_v1="eyJ.x.y"), BadClaim, {}),
    ("not a JWS", lambda i: "not-a-token", MalformedToken, {}),
    ("two parts", lambda i: ".".join(i.token(sub=SUB).split(".")[:2]), MalformedToken, {}),
    ("four parts", lambda i: i.token(sub=SUB) + ".x", MalformedToken, {}),
    ("header not JSON", lambda i: "bm90IGpzb24." + i.token(sub=SUB).split(".", 1)[1], MalformedToken, {}),
    ("payload a JSON list", lambda i: f"{b64({'alg': 'RS256'})}.{b64(b'[1]')}.c2ln", MalformedToken, {}),
    ("padded base64", lambda i: i.token(sub=SUB).replace(".", "=.", 1), MalformedToken, {}),
    ("header without alg", lambda i: f"{b64({'typ': 'JWT'})}.{b64(claims(i))}.c2ln", MalformedToken, {}),
    ("duplicate claim", duplicate_member, MalformedToken, {}),
    ("typ of another token kind", lambda i: with_header(i, typ="logout+jwt"), MalformedToken, {}),
    ("critical extension", lambda i: with_header(i, crit=["exp"], exp=1), MalformedToken, {}),
    ("kid not a string", lambda i: with_header(i, kid=5), MalformedToken, {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "error", "settings"), CASES, ids=[c[0] for c in CASES])
def test_rejected_with_typed_error_and_safe_reason(
    idp: LoopbackTestIssuer,
    name: str,
    make: Callable[[LoopbackTestIssuer], str],
    error: type[AuthError],
    settings: dict[str, Any],
) -> None:
    token = make(idp)

    async def validate() -> None:
        async with TokenValidator(oidc_for(idp, **settings)) as validator:
            await validator.validate(token)

    with pytest.raises(error) as caught:
        run(validate())
    exc = caught.value
    assert type(exc) is error
    assert isinstance(exc, NotAuthenticated)
    assert exc.reason and exc.code.startswith("auth.")
    shown = f"{exc.reason} {exc} {exc!r} {exc.args}"
    # Neither the token, nor any of its parts, nor a claim value other than issuer/audience names leaks.
    for part in [token, *[p for p in token.split(".") if len(p) > 8]]:
        assert part not in shown
    assert SUB not in shown and ORG not in shown
    assert "eyJ" not in shown
