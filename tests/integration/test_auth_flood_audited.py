"""A flood of failures by callers nobody authenticated is audited as counts: the first of each kind one by
one (with their token digests), the rest in entries whose `suppressed` says how many they stand for, so the
log grows by the rate, not by the flood, and every failure is still on record. Each caller is refused."""

from __future__ import annotations

import time
from typing import Any

import httpx
from gateway_site import audit_size, entries_since
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import token_digest
from gateway.failure_audit import BURST, RATE_PER_S

QUERY = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}, "kind": "count",
}  # fmt: skip
FLOOD = 150


def _settled(http: httpx.Client, idp: LoopbackTestIssuer, start: int, kind: str, total: int) -> list[Any]:
    """The entries of `kind` since `start` once they account for `total` failures (held-back ones are
    written within 1 / RATE_PER_S seconds)."""
    deadline = time.monotonic() + 10
    while True:
        entries = [e for e in entries_since(http, idp, start) if e["type"] == kind]
        if (
            sum(1 + e["payload"].get("suppressed", 0) for e in entries) >= total
            or time.monotonic() > deadline
        ):
            return entries
        time.sleep(0.2)


def test_bad_tokens_are_refused_each_and_audited_as_counts(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = audit_size(http, idp)
    began = time.monotonic()
    tokens = [f"not-a-jwt-{i}" for i in range(FLOOD)]
    for token in tokens:
        response = http.post("/v1/queries", json=QUERY, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    elapsed = time.monotonic() - began
    entries = _settled(http, idp, start, "auth.failed", FLOOD)
    assert sum(1 + e["payload"].get("suppressed", 0) for e in entries) == FLOOD
    # The log grew by the burst and the rate, not by the flood.
    assert len(entries) <= BURST + RATE_PER_S * (elapsed + 1) + 1 < FLOOD
    # The first ones are written as they came, each with its token's digest.
    assert [e["payload"]["token_digest"] for e in entries[:BURST]] == [
        token_digest(t) for t in tokens[:BURST]
    ]
    assert any(e["payload"].get("suppressed") for e in entries)
    assert {(e["payload"]["reason"], e["payload"]["route"]) for e in entries} == {
        ("auth.malformed_token", "POST:submit")
    }


def test_unknown_routes_flooded_are_refused_each_and_audited_as_counts(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = audit_size(http, idp)
    for i in range(FLOOD):
        assert http.get(f"/v1/no-such-route/{i}").status_code == 404
    entries = _settled(http, idp, start, "request.refused", FLOOD)
    assert sum(1 + e["payload"].get("suppressed", 0) for e in entries) == FLOOD
    assert len(entries) < FLOOD // 2
    assert {e["payload"]["refusal"] for e in entries} == {"not_found"}


def test_peer_assertions_flooded_are_refused_each_and_audited_as_counts(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = audit_size(http, idp)
    for i in range(FLOOD):
        response = http.post("/v1/queries", json=QUERY, headers={"Fedgate-Peer-Assertion": f"bogus.{i}.x"})
        assert response.status_code == 401
    entries = _settled(http, idp, start, "peer.rejected", FLOOD)
    assert sum(1 + e["payload"].get("suppressed", 0) for e in entries) == FLOOD
    assert len(entries) < FLOOD // 2


def test_failures_on_methods_a_caller_makes_up_stay_one_kind(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = audit_size(http, idp)
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
               "SEARCH", "REPORT", "PURGE", "MKCALENDAR"]  # fmt: skip
    for i in range(FLOOD):
        assert http.request(methods[i % len(methods)], "/v1/no-such-route").status_code in (404, 405)
    entries = _settled(http, idp, start, "request.refused", FLOOD)
    assert sum(1 + e["payload"].get("suppressed", 0) for e in entries) == FLOOD
    assert len(entries) < FLOOD // 2
