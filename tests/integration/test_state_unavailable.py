"""A steward's request the state database or the store cannot serve is a 503 problem naming which, audited as
a refusal: never a 500, never the database's path or URL."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_site import Site, audit_size, bearer, entries_since, running_gateway
from oidc_issuer import LoopbackTestIssuer

import gateway.state

NEEDS_APPROVAL = {
    "dataset": "cohort", "agreement": "DSA-TEST-APPROVAL", "purpose": {"duo": ["DUO:0000006"]},
    "kind": "summary", "params": {"column": "bmi"},
}  # fmt: skip
WITHDRAWALS = "/v1/steward/datasets/cohort/withdrawals"
WITHDRAWAL = {"patients": ["MRN-1"]}
BUSY_TIMEOUT_MS = 200


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """State connections wait `BUSY_TIMEOUT_MS` for a lock, not the 10 s a site waits: a locked database
    fails a write within the test's patience."""
    pragmas = gateway.state._sqlite_pragmas

    def shorter(dbapi_connection: Any, record: Any) -> None:
        pragmas(dbapi_connection, record)
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    monkeypatch.setattr(gateway.state, "_sqlite_pragmas", shorter)


@contextlib.contextmanager
def write_locked(site: Site) -> Iterator[None]:
    """Another process's transaction holds the state database's write lock (`BEGIN IMMEDIATE`)."""
    path = site.settings.state_url.removeprefix("sqlite:///").split("?")[0]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def assert_unavailable(answer: httpx.Response, title: str, site: Site) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["title"] == title
    assert str(site.root) not in answer.text and "sqlite" not in answer.text and "duckdb" not in answer.text


def refused_routes(http: httpx.Client, idp: LoopbackTestIssuer, start: int, title: str) -> list[str]:
    """The routes of the `request.refused` entries of that title from `start` on, each as unavailable."""
    refused = [
        e["payload"]
        for e in entries_since(http, idp, start)
        if e["type"] == "request.refused" and e["payload"]["title"] == title
    ]
    assert {p["refusal"] for p in refused} <= {"unavailable"}
    return sorted(p["route"] for p in refused)


def test_steward_actions_on_a_locked_state_database_are_503_and_audited(
    tmp_site: Site, idp: LoopbackTestIssuer, short_busy_timeout: None
) -> None:
    researcher = bearer(idp, "researcher", sub="locked-researcher")
    steward = bearer(idp, "steward", sub="locked-steward")
    approve = {"approve": True, "reason": "ethics approval on file"}
    reject = {"approve": False, "reason": "no ethics approval"}
    title = "State database unavailable"
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        request_id = http.post("/v1/queries", json=NEEDS_APPROVAL, headers=researcher).json()["request_id"]
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        agreements["DSA-TEST-OPEN"]["title"] = "Open test agreement, renamed while the state was locked"
        bundle = http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"]
        start = audit_size(http, idp)
        with write_locked(tmp_site):
            answers = {
                "approve": http.post(f"/v1/steward/approvals/{request_id}", json=approve, headers=steward),
                "reject": http.post(f"/v1/steward/approvals/{request_id}", json=reject, headers=steward),
                "withdraw": http.post(WITHDRAWALS, json=WITHDRAWAL, headers=steward),
                "replace": http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward),
            }
            # The queue is still listed: putting back stale claims is put off, not the listing.
            listed = http.get("/v1/steward/approvals", headers=steward)
        for answer in answers.values():
            assert_unavailable(answer, title, tmp_site)
        assert listed.status_code == 200 and [r["request_id"] for r in listed.json()] == [request_id]
        routes = refused_routes(http, idp, start, title)
        # Nothing was decided, recorded or changed, and once the lock is gone each goes through.
        polled = http.get(f"/v1/queries/{request_id}", headers=researcher).json()
        assert polled["status"] == "pending_approval"
        assert http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"] == bundle
        withdrawn = http.post(WITHDRAWALS, json=WITHDRAWAL, headers=steward)
        assert withdrawn.status_code == 200 and withdrawn.json()["new"] == 1
        approved = http.post(f"/v1/steward/approvals/{request_id}", json=approve, headers=steward)
        assert approved.status_code == 200 and approved.json()["status"] == "released"
    assert routes == ["POST:decide", "POST:decide", "POST:withdraw_consent", "PUT:replace_policy_document"]


def test_the_catalog_and_withdrawals_without_the_store_file_are_503_and_audited(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    store = Path(tmp_site.settings.store_url.removeprefix("duckdb:///"))
    store.rename(store.with_suffix(".moved"))  # as a restart finds it
    steward = bearer(idp, "steward", sub="storeless-steward")
    title = "Store unavailable"
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        start = audit_size(http, idp)
        listed = http.get("/v1/steward/datasets", headers=steward)
        withdrawn = http.post(WITHDRAWALS, json=WITHDRAWAL, headers=steward)
        routes = refused_routes(http, idp, start, title)
    for answer in (listed, withdrawn):
        assert_unavailable(answer, title, tmp_site)
    assert routes == ["GET:datasets", "POST:withdraw_consent"]


def test_a_withdrawal_when_the_master_key_became_unusable_is_503_without_naming_the_key_file(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    key = tmp_site.root / "keys" / "master.key"
    steward = bearer(idp, "steward", sub="keyless-steward")
    title = "The site master key is not usable"
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        start = audit_size(http, idp)
        key.chmod(0o644)  # readable by others since the gateway started: no longer a key to use
        try:
            refused = http.post(WITHDRAWALS, json=WITHDRAWAL, headers=steward)
        finally:
            key.chmod(0o600)
        routes = refused_routes(http, idp, start, title)
        withdrawn = http.post(WITHDRAWALS, json=WITHDRAWAL, headers=steward)
    assert_unavailable(refused, title, tmp_site)
    assert "master.key" not in refused.text and "chmod" not in refused.text
    assert routes == ["POST:withdraw_consent"]
    # Nothing was recorded by the refused request: the patient is new to the one that went through.
    assert withdrawn.status_code == 200 and withdrawn.json()["new"] == 1
