"""JSON nested past the recursion limit in a bearer token, a passport visa or a peer assertion is refused as
malformed, like any other undecodable segment, instead of escaping as a RecursionError (an HTTP 500)."""

from __future__ import annotations

import asyncio
import base64
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth import MalformedToken
from gateway.auth.signature import parse_token
from gateway.auth.visas import VisaIdentity, verify_visas
from gateway.federation.signing import MalformedAssertion, verify_assertion

# Deeper than the interpreter lets the JSON decoder recurse, wherever on the stack it is called from.
DEPTH = sys.getrecursionlimit() + 100


def _segment(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _nested(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def _token(header: str, payload: str) -> str:
    return f"{_segment(header)}.{_segment(payload)}.c2ln"


@pytest.mark.parametrize(
    ("header", "payload", "part"),
    [
        (f'{{"alg":"RS256","x":{_nested()}}}', '{"sub":"a"}', "header"),
        ('{"alg":"RS256"}', f'{{"sub":"a","x":{_nested()}}}', "payload"),
    ],
    ids=["header", "payload"],
)
def test_a_token_nested_too_deeply_is_malformed(header: str, payload: str, part: str) -> None:
    with pytest.raises(MalformedToken) as caught:
        parse_token(_token(header, payload))
    assert caught.value.code == "auth.malformed_token"
    assert caught.value.reason == f"the token's {part} nests JSON too deeply"


def test_a_token_nested_within_the_limit_still_parses() -> None:
    # What an identity provider might put in a claim: structure, a few levels deep.
    unverified = parse_token(_token('{"alg":"RS256"}', f'{{"sub":"a","x":{_nested(20)}}}'))
    assert unverified.alg == "RS256" and unverified.claims["sub"] == "a"


def test_a_visa_nested_too_deeply_is_dropped_and_the_passport_read_on() -> None:
    nested_visa = _token(f'{{"alg":"RS256","x":{_nested()}}}', '{"iss":"https://dac.example.org"}')
    outcome = asyncio.run(
        verify_visas(
            [nested_visa, "not-a-jwt"],
            holder=VisaIdentity(sub="a", iss="https://idp.example.org"),
            sources=lambda _iss: None,
            algorithms={"RS256"},
            now=0.0,
            leeway_s=0.0,
        )
    )
    assert outcome.visas == () and outcome.dropped == 2
    assert outcome.notes[0] == "visa 0 dropped: the token's header nests JSON too deeply (issuer unknown)"
    assert outcome.notes[1].startswith("visa 1 dropped: the token is not a compact JWS")


@pytest.mark.parametrize("part", ["header", "claims"])
def test_a_peer_assertion_nested_too_deeply_is_malformed(part: str) -> None:
    # An assertion is at most 4096 characters: 1500 levels fit in its base64url and exceed the limit.
    nested = _nested(1500)
    header = f'{{"alg":"EdDSA","typ":"fedgate-peer+jwt","x":{nested}}}' if part == "header" else "{}"
    claims = f'{{"iss":"site-de","x":{nested}}}' if part == "claims" else "{}"
    token = _token(header, claims)
    assert len(token) <= 4096, "the assertion must pass the size check to reach the decoder"
    with pytest.raises(MalformedAssertion) as caught:
        verify_assertion(
            token,
            site_id="site-fr",
            peers={"site-de": Ed25519PrivateKey.generate().public_key()},
            method="POST",
            path="/v1/queries",
            body=b"{}",
        )
    assert (
        caught.value.reason == "malformed" and str(caught.value) == "the peer assertion nests JSON too deeply"
    )
