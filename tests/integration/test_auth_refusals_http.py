"""Refusals of the bearer token and of its role, over HTTP: each is a 401 or 403 problem with RFC 6750's
challenge, audited as `auth.failed` (with the actor once known, never with the token), and never a 500;
a body that is not JSON does not let an unauthenticated caller past the token check."""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_site import audit_size, bearer, entries_since
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import token_digest

QUERY = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}, "kind": "count",
}  # fmt: skip


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_time_no_float_holds_is_a_401_audited_without_the_token(
    http: httpx.Client, idp: LoopbackTestIssuer, claim: str
) -> None:
    token = idp.token(roles=["researcher"], **{claim: 10**400})
    start = audit_size(http, idp)
    response = http.post("/v1/queries", json=QUERY, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fedgate", error="invalid_token"'
    assert claim in response.json()["reasons"][0]
    entries = entries_since(http, idp, start)
    assert [e["payload"] for e in entries] == [
        {"reason": "auth.bad_claim", "route": "POST:submit", "token_digest": token_digest(token)}
    ]
    assert token not in json.dumps(entries) and token not in response.text


def test_a_check_that_fails_unexpectedly_authenticates_no_one(
    http: httpx.Client, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> float:
        raise ArithmeticError("a defect in a claim check")

    token = idp.token(roles=["researcher"])
    start = audit_size(http, idp)
    monkeypatch.setattr("gateway.auth.validator.check_times", broken)
    response = http.post("/v1/queries", json=QUERY, headers={"Authorization": f"Bearer {token}"})
    monkeypatch.undo()
    assert response.status_code == 401
    assert response.json()["reasons"] == ["the token could not be checked"]
    assert [e["payload"]["reason"] for e in entries_since(http, idp, start)] == ["auth.failed"]


def test_the_token_digest_does_not_depend_on_the_schemes_case(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    token = idp.token(roles=["researcher"], exp=1)
    start = audit_size(http, idp)
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = http.post("/v1/queries", json=QUERY, headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 401
    digests = {e["payload"]["token_digest"] for e in entries_since(http, idp, start)}
    assert digests == {token_digest(token)}


def test_a_request_without_a_token_gets_a_challenge_without_an_error(http: httpx.Client) -> None:
    response = http.post("/v1/queries", json=QUERY)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fedgate"'


def test_a_missing_role_is_a_403_audited_with_who_asked(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    start = audit_size(http, idp)
    response = http.get("/v1/steward/datasets", headers=bearer(idp, "researcher", sub="mallory-7"))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == 'Bearer realm="fedgate", error="insufficient_scope"'
    (entry,) = entries_since(http, idp, start)
    assert entry["type"] == "auth.failed"
    assert entry["payload"] == {"reason": "Forbidden", "route": "GET:datasets", "role": "steward"}
    assert entry["actor"]["sub"] == "mallory-7"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/queries"), ("PUT", "/v1/steward/policy-data/agreements"), ("POST", "/v1/glm/sessions")],
)
def test_a_body_that_is_not_json_is_refused_at_the_token_first(
    http: httpx.Client, idp: LoopbackTestIssuer, method: str, path: str
) -> None:
    headers = {"Content-Type": "application/json"}
    start = audit_size(http, idp)
    anonymous = http.request(method, path, content=b"{not json", headers=headers)
    assert anonymous.status_code == 401
    auditor = {**headers, **bearer(idp, "auditor")}
    wrong_role = http.request(method, path, content=b"{not json", headers=auditor)
    assert wrong_role.status_code == 403
    entries = entries_since(http, idp, start)
    assert [e["type"] for e in entries] == ["auth.failed", "auth.failed"]
    # With the role, the body's own fault is what the caller hears.
    role = "steward" if "steward" in path else "researcher"
    allowed = http.request(method, path, content=b"{not json", headers={**headers, **bearer(idp, role)})
    assert allowed.status_code == 422
