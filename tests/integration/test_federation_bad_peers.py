"""A coordinator meets peers whose answers are not what a gateway sends: each such site ends with a status
and a reason, the others are pooled, and the request is answered and audited, never a 500."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from federation_sites import FakePeer, Federation, build_federation, running_federation, serve_fake_peer
from gateway_site import bearer, free_port
from oidc_issuer import LoopbackTestIssuer

from gateway.federation.glm_fit import FitStopped, HttpGlmSite, fit_federated_glm
from gateway.federation.glm_site import GlmArrays, InMemoryGlmSite

QUERY = {
    "dataset": "cohort",
    "agreement": "DSA-TEST-OPEN",
    "purpose": {"duo": ["DUO:0000006"]},
    "kind": "count",
}
SITES = ["site-de", "site-fr"]
TIMEOUT_S = 2
BAD_PEERS = {
    # A byte every 0.3 s: each read is quick, the whole answer never ends within the timeout.
    "site-trickle": "timed_out",
    # An answer of 40 MiB: read no further than the cap.
    "site-huge": "invalid_answer",
    # A refusal whose reasons are not a list.
    "site-oddrefusal": "denied",
    # A count JSON can write but no float can hold.
    "site-overflow": "invalid_answer",
    # JSON nested past the parser's depth.
    "site-nested": "invalid_answer",
    # A survival table whose bin has more events than rows at risk (to a count: the wrong kind).
    "site-badkm": "invalid_answer",
    # A value no canonical JSON holds (2**53, 1e400 read as infinity), which the pooled answer's hash needs.
    "site-bigvalue": "invalid_answer",
    "site-infvalue": "invalid_answer",
    # A margin that is no single value.
    "site-listmargin": "invalid_answer",
}


class _BadPeer(FakePeer):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, body = 200, b""
        if self.behaviour == "site-trickle":
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "1000")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.3)
            return
        if self.behaviour == "site-huge":
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(40 * 2**20))
            self.end_headers()
            chunk = b" " * 2**20
            for _ in range(40):
                self.wfile.write(chunk)
            return
        if self.behaviour == "site-oddrefusal":
            status, body = 403, json.dumps({"title": "Denied", "reasons": 5}).encode()
        elif self.behaviour == "site-overflow":
            rows = [{"count": 10**400, "suppressed": False}]
            answer = {"kind": "count", "request_id": "x", "columns": ["count", "suppressed"], "rows": rows,
                      "disclosure": {"min_cell_count": 10, "round_to": 1}}  # fmt: skip
            body = json.dumps(answer).encode()
        elif self.behaviour == "site-badkm":
            bins = [{"lower": None, "upper": 730.0, "at_risk": 50, "events": 60, "censored": 0},
                    {"lower": 730.0, "upper": None, "at_risk": 0, "events": 0, "censored": 0}]  # fmt: skip
            answer = {"kind": "kaplan_meier", "request_id": "x", "columns": list(bins[0]), "rows": bins,
                      "disclosure": {"min_cell_count": 10, "round_to": 1}}  # fmt: skip
            body = json.dumps(answer).encode()
        elif self.behaviour in ("site-bigvalue", "site-infvalue", "site-listmargin"):
            odd = {"site-bigvalue": "9007199254740992", "site-infvalue": "1e400", "site-listmargin": "[1]"}
            body = (
                b'{"kind": "count", "request_id": "x", "columns": ["count", "suppressed", "margin"], '
                b'"rows": [{"count": 12, "suppressed": false, "margin": '
                + odd[self.behaviour].encode()
                + b"}], "
                b'"disclosure": {"min_cell_count": 10, "round_to": 1}}'
            )
        elif self.behaviour == "site-nested":
            body = b"[" * 200_000 + b"]" * 200_000
        self.answer(status, body)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Federation:
    extra = {site: free_port() for site in BAD_PEERS}
    return build_federation(
        tmp_path_factory.mktemp("bad"), idp.issuer_url, SITES, rows=300, extra_peers=extra
    )


@pytest.fixture(scope="module")
def urls(fed: Federation) -> Iterator[dict[str, str]]:
    servers = []
    for peer in fed.sites["site-de"].settings.peers:
        if peer.id in BAD_PEERS:
            servers.append(serve_fake_peer(_BadPeer, peer.id, int(peer.url.rsplit(":", 1)[1])))
    try:
        with running_federation(fed) as running:
            yield running
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_every_bad_peer_ends_with_a_status_and_the_good_ones_are_pooled(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    started = time.monotonic()
    response = httpx.post(
        f"{urls['site-de']}/v1/federated-queries",
        json={**QUERY, "timeout_s": TIMEOUT_S},
        headers=bearer(idp, "researcher"),
        timeout=60,
    )
    assert time.monotonic() - started < TIMEOUT_S + 4  # the trickling peer costs its timeout, no more
    assert response.status_code == 200, response.text
    body = response.json()
    status = {s["site"]: s for s in body["sites"]}
    assert {site: status[site]["status"] for site in BAD_PEERS} == BAD_PEERS
    assert "larger than 16 MiB" in status["site-huge"]["reasons"][0]
    assert status["site-oddrefusal"]["reasons"] == ["Denied"]
    assert body["covered"] == SITES
    own = [
        httpx.post(f"{urls[s]}/v1/queries", json=QUERY, headers=bearer(idp, "researcher"), timeout=30).json()[
            "rows"
        ][0]["count"]
        for s in SITES
    ]
    assert body["rows"][0]["count"] == sum(own)


GLM_STATUS = BAD_PEERS  # the same answers to a session's opening end the same way


@pytest.mark.parametrize("peer", sorted(BAD_PEERS))
def test_a_federated_fit_stops_naming_the_site_whose_answer_is_bad(
    urls: dict[str, str], fed: Federation, idp: LoopbackTestIssuer, peer: str
) -> None:
    url = next(p.url for p in fed.sites["site-de"].settings.peers if p.id == peer)
    authorization = bearer(idp, "researcher")["Authorization"]
    x = np.column_stack([np.ones(40), np.arange(40.0)])
    arrays = GlmArrays(x, x[:, 1], np.zeros(40), np.ones(40))
    good = InMemoryGlmSite("site-good", ["(Intercept)", "bmi"], arrays, "gaussian")
    session = {"agreement": "DSA-TEST-OPEN", "dataset": "cohort", "model": {}}

    async def fit() -> None:
        async with httpx.AsyncClient() as client:
            bad = HttpGlmSite(peer, url, authorization, session, client, timeout=TIMEOUT_S)
            await fit_federated_glm([good, bad], "gaussian")

    started = time.monotonic()
    with pytest.raises(FitStopped) as stopped:
        asyncio.run(fit())
    assert time.monotonic() - started < TIMEOUT_S + 4
    table = {row["site"]: row for row in stopped.value.sites}
    assert table[peer]["status"] == GLM_STATUS[peer] and table[peer]["reasons"]
    if peer == "site-huge":  # read no further than the cap, as a query's answer
        assert "larger than 16 MiB" in table[peer]["reasons"][0]
    assert table["site-good"]["status"] == "answered"


def test_one_bad_survival_table_is_set_aside_and_the_others_pooled(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    params = {"time": "survival_days", "event": "event", "edges": [730]}
    body = {**QUERY, "kind": "kaplan_meier", "params": params, "sites": [*SITES, "site-badkm"],
            "timeout_s": TIMEOUT_S}  # fmt: skip
    response = httpx.post(
        f"{urls['site-de']}/v1/federated-queries", json=body, headers=bearer(idp, "researcher"), timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    status = {s["site"]: s for s in answer["sites"]}
    assert status["site-badkm"]["status"] == "invalid_answer"
    assert "more events and censorings than rows at risk" in status["site-badkm"]["reasons"][0]
    assert answer["covered"] == SITES and answer["rows"]
