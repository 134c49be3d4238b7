"""Tokens whose JSON nests past the recursion limit, over HTTP: a bearer token is refused with a 401 problem
and an `auth.failed` entry that holds its digest but not the token, a visa in a valid token is dropped while
the request is served, and a peer assertion is refused with a 401 and a `peer.rejected` entry; never a 500."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import httpx
from gateway_site import audit_size, bearer, entries_since
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import token_digest
from gateway.federation.signing import HEADER

QUERY = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}, "kind": "count",
}  # fmt: skip


def _segment(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _nested_token(depth: int, **claims: Any) -> str:
    header = '{"alg":"RS256","x":' + "[" * depth + "]" * depth + "}"
    return f"{_segment(header)}.{_segment(json.dumps(claims))}.c2ln"


def test_a_deeply_nested_bearer_token_is_a_401_audited_without_the_token(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    token = _nested_token(sys.getrecursionlimit() + 2000, iss=idp.issuer_url, sub="researcher-1")
    start = audit_size(http, idp)
    response = http.post("/v1/queries", json=QUERY, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["title"] == "Authentication failed"
    assert problem["reasons"] == ["the token's header nests JSON too deeply"]
    assert token not in response.text
    entries = entries_since(http, idp, start)
    assert [e["payload"] for e in entries if e["type"] == "auth.failed"] == [
        {"reason": "auth.malformed_token", "route": "POST:submit", "token_digest": token_digest(token)}
    ]
    assert token not in json.dumps(entries)


def test_a_deeply_nested_visa_is_dropped_and_the_request_served(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    visa = _nested_token(sys.getrecursionlimit() + 2000, iss="https://dac.example.org", sub="researcher-1")
    token = idp.token(roles=["steward"], visas=[visa])
    response = http.get("/v1/steward/datasets", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_a_deeply_nested_peer_assertion_is_a_401_audited_as_malformed(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    # The deepest nesting that fits the assertion's 4096 characters is past the recursion limit.
    header = '{"alg":"EdDSA","typ":"fedgate-peer+jwt","x":' + "[" * 1500 + "]" * 1500 + "}"
    assertion = f"{_segment(header)}.{_segment('{}')}.c2ln"
    start = audit_size(http, idp)
    response = http.post("/v1/queries", json=QUERY, headers={**bearer(idp, "researcher"), HEADER: assertion})
    assert response.status_code == 401
    assert response.json()["title"] == "Peer authentication failed"
    rejected = [e["payload"] for e in entries_since(http, idp, start) if e["type"] == "peer.rejected"]
    assert [p["reason"] for p in rejected] == ["malformed: the peer assertion nests JSON too deeply"]
