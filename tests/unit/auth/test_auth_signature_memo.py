"""A verified signature is remembered per token and key; nothing else about a token is."""

from __future__ import annotations

import time

import pytest
from auth_helpers import oidc_for, run
from joserfc import jws
from joserfc.jwk import RSAKey
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import TokenValidator
from gateway.auth.errors import BadSignature, TokenExpired
from gateway.auth.signature import parse_token, registry_for, verify_signature


def _signed(key: RSAKey, claims: str = '{"iss":"https://idp.example","sub":"alice"}') -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    return jws.serialize_compact(header, claims, key, registry=registry_for("RS256"))


def test_a_token_remembered_under_one_key_does_not_verify_under_another() -> None:
    signer, other = RSAKey.generate_key(2048), RSAKey.generate_key(2048)
    token = _signed(signer)
    verify_signature(token, parse_token(token), signer)
    verify_signature(token, parse_token(token), signer)  # remembered: still accepted
    with pytest.raises(BadSignature):
        verify_signature(token, parse_token(token), other)


def test_a_tampered_copy_of_a_remembered_token_is_refused() -> None:
    signer = RSAKey.generate_key(2048)
    token = _signed(signer)
    verify_signature(token, parse_token(token), signer)
    head, payload, signature = token.split(".")
    forged = _signed(RSAKey.generate_key(2048), '{"iss":"https://idp.example","sub":"mallory"}')
    for tampered in (
        f"{head}.{forged.split('.')[1]}.{signature}",
        f"{head}.{payload}.{forged.split('.')[2]}",
    ):
        with pytest.raises(BadSignature):
            verify_signature(tampered, parse_token(tampered), signer)


def test_a_remembered_token_is_refused_once_it_expires(idp: LoopbackTestIssuer) -> None:
    now = [time.time()]
    token = idp.token(sub="alice", ttl_s=60)

    async def twice() -> None:
        async with TokenValidator(oidc_for(idp), clock=lambda: now[0]) as validator:
            assert (await validator.validate(token)).sub == "alice"
            now[0] += 3600
            with pytest.raises(TokenExpired):
                await validator.validate(token)

    run(twice())
