"""A federation under stress over real HTTP: peers down, slow, denying or lying; forged coordinators; a
coordinator's own part that outlasts its timeout, and queries whose caller stops waiting."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from federation_sites import (
    FakePeer,
    Federation,
    audit_entries,
    build_federation,
    running_federation,
    serve_fake_peer,
    set_agreement,
)
from gateway_site import Site, bearer, free_port, logged_entries
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import Principal
from gateway.federation.signing import HEADER, PeerSigner, load_peer_key
from gateway.pipeline import CANCELLED, QueryPipeline, new_request_id
from gateway.query import parse_query_spec
from gateway.refusal import Refusal
from gateway.runtime import SiteRuntime

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


# -- the coordinator's own part, and requests whose caller stops waiting ------------------------------------


ENDS = {"query.released", "query.refused"}


def ended_trail(url: str, idp: LoopbackTestIssuer, request_id: str) -> list[dict[str, Any]]:
    """A request's trail at a site once it has ended (released or refused); fails after 20 s without."""
    deadline = time.monotonic() + 20
    while True:
        trail = [e for e in audit_entries(url, idp) if e.get("request_id") == request_id]
        if ENDS & {e["type"] for e in trail}:
            return trail
        assert time.monotonic() < deadline, f"the trail never ended: {[e['type'] for e in trail]}"
        time.sleep(0.1)


def test_a_timed_out_own_part_ends_on_record_and_the_coordinator_names_it(
    urls: dict[str, str], idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Federated quantiles whose second round (the histogram) is held at the coordinator's own site past
    `timeout_s`: the coordinator reports the site timed out, the site's request runs on to its release on
    record (nothing of it pooled), and the coordinator's entry names both legs by the sites' request ids."""
    gate = threading.Event()
    decide = QueryPipeline._decide

    async def held(self: QueryPipeline, principal: Principal, subject: Any, *args: Any, **kwargs: Any) -> Any:
        if principal.sub == "held-own-part" and getattr(subject, "kind", None) == "histogram":
            await asyncio.to_thread(gate.wait, 30)
        return await decide(self, principal, subject, *args, **kwargs)

    monkeypatch.setattr(QueryPipeline, "_decide", held)
    spec = {
        **BASE,
        "kind": "quantiles",
        "params": {"column": "bmi", "probs": [0.25, 0.5, 0.75]},
        "sites": ["site-de"],
        "timeout_s": 2,
    }
    try:
        body = httpx.post(
            f"{urls['site-de']}/v1/federated-queries",
            json=spec,
            headers=bearer(idp, "researcher", sub="held-own-part"),
            timeout=30,
        ).json()
    finally:
        gate.set()
    (site,) = body["sites"]
    assert site["status"] == "timed_out" and body["covered"] == []
    (released,) = [
        e
        for e in audit_entries(urls["site-de"], idp)
        if e["type"] == "federation.released" and e["request_id"] == body["request_id"]
    ]
    legs = released["payload"]["legs"]
    assert [(leg["site"], leg["round"], leg["status"]) for leg in legs] == [
        ("site-de", 1, "answered"),
        ("site-de", 2, "timed_out"),
    ]
    assert legs[0]["request_id"] == site["request_id"]
    first = ended_trail(urls["site-de"], idp, legs[0]["request_id"])
    assert first[0]["payload"]["kind"] == "quantiles" and first[-1]["type"] == "query.released"
    late = ended_trail(urls["site-de"], idp, legs[1]["request_id"])
    assert [e["type"] for e in late] == [
        "query.received",
        "query.decided",
        "query.executed",
        "query.released",
    ]
    assert late[0]["payload"]["kind"] == "histogram" and late[0]["payload"]["coordinator"] == "site-de"


RESEARCHER = Principal(
    sub="cancelled-researcher",
    org="org-aphp",
    country="FR",
    roles=frozenset({"researcher"}),
    visas=(),
    issuer="test",
)


@pytest.mark.parametrize("where", ["decide", "execute"])
def test_a_cancelled_query_still_ends_refused_on_record(
    tmp_site: Site, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A caller that stops waiting cancels `submit` (a coordinator's timeout did, before its own part ran
    as a task of its own; a server shutting down does). Cancelled while it is decided, the request is
    refused as cancelled; cancelled while the store runs it, it ends as the run ends (here refused by the
    agreement's limit). Either way its trail ends with a refusal, never half-way."""
    reached, gate = threading.Event(), threading.Event()
    if where == "decide":
        decide = QueryPipeline._decide

        async def held(self: QueryPipeline, *args: Any, **kwargs: Any) -> Any:
            reached.set()
            await asyncio.to_thread(gate.wait, 30)
            return await decide(self, *args, **kwargs)

        monkeypatch.setattr(QueryPipeline, "_decide", held)
    else:

        def over_the_limit(self: QueryPipeline, job: Any) -> Any:
            reached.set()
            gate.wait(30)
            raise Refusal("limit", "Repeated query limit reached", ["held over its limit"], stage="limit")

        monkeypatch.setattr(QueryPipeline, "_prepare", over_the_limit)
    request_id = new_request_id()

    async def cancelled() -> None:
        runtime = SiteRuntime.start(tmp_site.settings)
        try:
            spec = parse_query_spec({**BASE, "kind": "count"})
            task = asyncio.ensure_future(QueryPipeline(runtime).submit(RESEARCHER, spec, request_id))
            assert await asyncio.to_thread(reached.wait, 30)
            task.cancel()
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            gate.set()
            await runtime.aclose()

    asyncio.run(cancelled())
    trail = [e for e in logged_entries(tmp_site.settings) if e.get("request_id") == request_id]
    if where == "decide":
        assert [e["type"] for e in trail] == ["query.received", "query.refused"]
        assert trail[-1]["payload"]["stage"] == "decide"
        assert trail[-1]["payload"]["reasons"] == [CANCELLED]
    else:
        assert [e["type"] for e in trail] == ["query.received", "query.decided", "query.refused"]
        assert trail[-1]["payload"]["stage"] == "limit"
        assert trail[-1]["payload"]["reasons"] == ["held over its limit"]
