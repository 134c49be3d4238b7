"""A federation under stress over real HTTP: peers down, slow, denying or lying; forged coordinators."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from federation_sites import (
    FakePeer,
    Federation,
    build_federation,
    running_federation,
    serve_fake_peer,
    set_agreement,
)
from gateway_site import bearer, free_port
from oidc_issuer import LoopbackTestIssuer

from gateway.federation.signing import HEADER, PeerSigner, load_peer_key

BASE: dict[str, Any] = {
    "dataset": "cohort",
    "agreement": "DSA-TEST-OPEN",
    "purpose": {"duo": ["DUO:0000006"]},
}
SITES = ["site-de", "site-fr", "site-nl"]


class _FakePeer(FakePeer):
    """`slow` never answers in time; `liar` answers a count below its own declared minimum."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.behaviour == "slow":
            time.sleep(10)
        body = json.dumps(
            {
                "kind": "count",
                "request_id": "x",
                "columns": ["count", "suppressed"],
                "rows": [{"count": 3, "suppressed": False}],
                "disclosure": {"min_cell_count": 10, "round_to": 1},
            }
        ).encode()
        self.answer(200, body)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Federation:
    extra = {"site-down": free_port(), "site-slow": free_port(), "site-liar": free_port()}
    fed = build_federation(
        tmp_path_factory.mktemp("fed"), idp.issuer_url, SITES, rows=1500, extra_peers=extra
    )
    # site-nl's copy of the agreement has ended: it denies, with its own reason.
    set_agreement(fed.sites["site-nl"], "DSA-TEST-OPEN", not_before="2025-01-01", not_after="2026-06-30")
    return fed


@pytest.fixture(scope="module")
def urls(fed: Federation) -> Iterator[dict[str, str]]:
    fakes = [serve_fake_peer(_FakePeer, name, fed_port(fed, f"site-{name}")) for name in ("slow", "liar")]
    try:
        with running_federation(fed) as running:
            yield running
    finally:
        for server in fakes:
            server.shutdown()
            server.server_close()


def fed_port(fed: Federation, peer: str) -> int:
    url = next(p.url for p in fed.sites["site-de"].settings.peers if p.id == peer)
    return int(url.rsplit(":", 1)[1])


def audit_entries(url: str, idp: LoopbackTestIssuer) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/audit/entries", headers=bearer(idp, "auditor"), timeout=30)
    return [json.loads(base64.b64decode(e["entry"])) for e in response.json()["entries"]]


def test_every_site_gets_a_status_and_none_is_dropped(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    started = time.monotonic()
    response = httpx.post(
        f"{urls['site-de']}/v1/federated-queries",
        json={**BASE, "kind": "count", "timeout_s": 1},
        headers=bearer(idp, "researcher"),
        timeout=30,
    )
    assert time.monotonic() - started < 6  # the slow peer costs its 1 s timeout, not its 10 s
    body = response.json()
    status = {s["site"]: s for s in body["sites"]}
    assert {k: v["status"] for k, v in status.items()} == {
        "site-de": "answered",
        "site-fr": "answered",
        "site-nl": "denied",
        "site-down": "unreachable",
        "site-slow": "timed_out",
        "site-liar": "invalid_answer",
    }
    assert any("2026-06-30" in r or "expired" in r or "valid" in r for r in status["site-nl"]["reasons"])
    assert body["covered"] == ["site-de", "site-fr"]
    own = [
        httpx.post(
            f"{urls[s]}/v1/queries",
            json={**BASE, "kind": "count"},
            headers=bearer(idp, "researcher"),
            timeout=30,
        ).json()["rows"][0]["count"]
        for s in ("site-de", "site-fr")
    ]
    assert body["rows"][0]["count"] == sum(own)
    released = [e for e in audit_entries(urls["site-de"], idp) if e["type"] == "federation.released"][-1]
    assert released["payload"] == {
        **released["payload"],
        "covered": 2,
        "answered": 2,
        "denied": 1,
        "unreachable": 1,
        "timed_out": 1,
        "invalid_answer": 1,
    }


def test_approval_pending_sites_report_their_request(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {
        **BASE,
        "agreement": "DSA-TEST-APPROVAL",
        "kind": "summary",
        "params": {"column": "bmi"},
        "sites": ["site-de", "site-fr"],
    }
    body = httpx.post(
        f"{urls['site-de']}/v1/federated-queries", json=spec, headers=bearer(idp, "researcher"), timeout=30
    ).json()
    assert [s["status"] for s in body["sites"]] == ["approval_pending", "approval_pending"]
    assert all(s["request_id"] for s in body["sites"])
    assert body["covered"] == [] and body["status"] == "no_site_answered"


def test_a_suppressing_site_is_reported_as_suppressed(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {
        **BASE,
        "kind": "count",
        "sites": ["site-fr"],
        "filters": {"column": "bmi", "op": ">", "value": 90},
    }
    body = httpx.post(
        f"{urls['site-de']}/v1/federated-queries", json=spec, headers=bearer(idp, "researcher"), timeout=30
    ).json()
    (site,) = body["sites"]
    assert site["status"] == "suppressed"  # too few rows match: disclosure refuses
    assert body["covered"] == []


# -- forged coordinators ------------------------------------------------------------------------------------


def _send(
    url: str, idp: LoopbackTestIssuer, assertion: str, body: bytes, sub: str = "researcher-a", **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/queries",
        content=body,
        timeout=30,
        headers={
            **bearer(idp, "researcher", sub=sub),
            HEADER: assertion,
            "content-type": "application/json",
            **headers,
        },
    )


def _rejections(url: str, idp: LoopbackTestIssuer) -> list[str]:
    return [e["payload"]["reason"] for e in audit_entries(url, idp) if e["type"] == "peer.rejected"]


def _real_signer(fed: Federation) -> PeerSigner:
    return PeerSigner("site-de", load_peer_key(fed.peer_key_path("site-de")))


BODY = json.dumps({**BASE, "kind": "count"}).encode()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown key", "unknown_peer"),
        ("bad signature", "bad_signature"),
        ("expired", "stale"),
        ("other body", "request_mismatch"),
        ("other audience", "request_mismatch"),
        ("garbage", "malformed"),
    ],
)
def test_forged_assertions_are_rejected_and_audited(
    urls: dict[str, str], idp: LoopbackTestIssuer, fed: Federation, case: str, reason: str
) -> None:
    real = _real_signer(fed)
    assertion = {
        "unknown key": lambda: PeerSigner("site-zz", Ed25519PrivateKey.generate()).assertion(
            "site-fr", "POST", "/v1/queries", BODY
        ),
        "bad signature": lambda: PeerSigner("site-de", Ed25519PrivateKey.generate()).assertion(
            "site-fr", "POST", "/v1/queries", BODY
        ),
        "expired": lambda: real.assertion("site-fr", "POST", "/v1/queries", BODY, now=time.time() - 300),
        "other body": lambda: real.assertion("site-fr", "POST", "/v1/queries", b"{}"),
        "other audience": lambda: real.assertion("site-nl", "POST", "/v1/queries", BODY),
        "garbage": lambda: "not.a.jws",
    }[case]()
    before = len(_rejections(urls["site-fr"], idp))
    response = _send(urls["site-fr"], idp, assertion, BODY)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Peer authentication failed"
    rejections = _rejections(urls["site-fr"], idp)
    assert len(rejections) == before + 1 and rejections[-1].startswith(reason)


def test_a_replayed_assertion_is_rejected(
    urls: dict[str, str], idp: LoopbackTestIssuer, fed: Federation
) -> None:
    assertion = _real_signer(fed).assertion("site-fr", "POST", "/v1/queries", BODY)
    assert _send(urls["site-fr"], idp, assertion, BODY).status_code == 200
    again = _send(urls["site-fr"], idp, assertion, BODY)
    assert again.status_code == 401
    assert _rejections(urls["site-fr"], idp)[-1].startswith("replayed")


def test_a_coordinator_cannot_change_who_the_researcher_is(
    urls: dict[str, str], idp: LoopbackTestIssuer, fed: Federation
) -> None:
    signer = _real_signer(fed)
    lie = {"sub": "researcher-b", "researcher": "researcher-b", "org": "org-other"}
    assertion = signer.assertion("site-fr", "POST", "/v1/queries", BODY, **lie)
    response = _send(
        urls["site-fr"],
        idp,
        assertion,
        BODY,
        sub="researcher-a",
        **{"X-Fedgate-Researcher": "researcher-b", "X-Forwarded-User": "researcher-b"},
    )
    assert response.status_code == 200
    request_id = response.json()["request_id"]
    entries = [e for e in audit_entries(urls["site-fr"], idp) if e.get("request_id") == request_id]
    assert entries and {e["actor"]["sub"] for e in entries} == {"researcher-a"}
    received = next(e for e in entries if e["type"] == "query.received")
    assert received["payload"]["coordinator"] == "site-de" and received["payload"]["federated"] is True
    # A claim in the body is no part of a query spec: refused, never believed.
    body = json.dumps({**BASE, "kind": "count", "requester": {"sub": "researcher-b"}}).encode()
    assertion = signer.assertion("site-fr", "POST", "/v1/queries", body)
    assert _send(urls["site-fr"], idp, assertion, body, sub="researcher-a").status_code == 422


def test_a_coordinator_that_forwards_no_valid_token_gets_nothing(
    urls: dict[str, str], idp: LoopbackTestIssuer, fed: Federation
) -> None:
    assertion = _real_signer(fed).assertion("site-fr", "POST", "/v1/queries", BODY)
    response = httpx.post(
        f"{urls['site-fr']}/v1/queries",
        content=BODY,
        timeout=30,
        headers={
            HEADER: assertion,
            "content-type": "application/json",
            "Authorization": "Bearer forged.token.value",
        },
    )
    assert response.status_code == 401
