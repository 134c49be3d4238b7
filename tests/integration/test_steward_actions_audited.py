"""Whoever a valid token names, what they do is served and on record; a steward's rejection ends its query's
trail; a steward's body that is not what the route takes is a 422 naming it, and changes nothing."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import pytest
from gateway_site import Site, bearer, running_gateway, serving, verify_exported_log
from oidc_issuer import LoopbackTestIssuer

from audit.errors import StorageError
from gateway.app import create_app
from gateway.runtime import recordable_name

COUNT = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}, "kind": "count",
}  # fmt: skip
NEEDS_APPROVAL = {**COUNT, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "bmi"}}
# A subject some issuers use (a 64-hex digest) and an organisation of several words: the log takes the
# second as it is, and names the first by its digest, since a long opaque string could be a credential.
OPAQUE_SUB = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ORG = "Example University"


def entries(http: httpx.Client, idp: LoopbackTestIssuer, start: int = 0) -> list[dict[str, Any]]:
    page = http.get("/v1/audit/entries", params={"start": start}, headers=bearer(idp, "auditor")).json()
    return [json.loads(base64.b64decode(e["entry"])) for e in page["entries"]]


def test_a_caller_the_log_names_by_digest_is_served_and_recorded(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    digest = recordable_name(OPAQUE_SUB)
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", digest)
    researcher = bearer(idp, "researcher", sub=OPAQUE_SUB)
    steward = bearer(idp, "steward", sub=OPAQUE_SUB + "-steward", org=ORG)
    stranger = bearer(idp, "researcher", sub="visitor-1", org=ORG)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        answered = http.post("/v1/queries", json=COUNT, headers=researcher)
        assert answered.status_code == 200
        # The agreement's parties do not include this organisation: refused by policy, not by a crash.
        denied = http.post("/v1/queries", json=COUNT, headers=stranger)
        assert denied.status_code == 403

        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        agreements["DSA-TEST-OPEN"]["title"] = "Open test agreement, renamed"
        replaced = http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward)
        assert replaced.status_code == 200
        mrns = tmp_site.source["patient_id"].to_pylist()[:3]
        withdrawn = http.post(
            "/v1/steward/datasets/cohort/withdrawals", json={"patients": mrns}, headers=steward
        )
        assert withdrawn.status_code == 200 and withdrawn.json()["new"] == 3

        pending = http.post("/v1/queries", json=NEEDS_APPROVAL, headers=researcher)
        assert pending.status_code == 202
        request_id = pending.json()["request_id"]
        approval = {"approve": True, "reason": "ethics committee approval on file"}
        approved = http.post(f"/v1/steward/approvals/{request_id}", json=approval, headers=steward)
        assert approved.status_code == 200 and approved.json()["status"] == "released"

        log = entries(http, idp)
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    actors = {(e["type"], e["actor"]["sub"], e["actor"]["org"]) for e in log if e["actor"] is not None}
    steward_digest = recordable_name(OPAQUE_SUB + "-steward")
    for event in ("policy.changed", "consent.withdrawn", "approval.decided"):
        assert (event, steward_digest, ORG) in actors
    assert ("query.released", digest, "org-aphp") in actors
    assert ("query.refused", "visitor-1", ORG) in actors
    assert OPAQUE_SUB.encode() not in export
    verify_exported_log(export, tmp_site.settings, tmp_site.root)


def test_a_rejected_query_ends_refused_in_its_trail_and_the_summary(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher", sub="rejected-researcher")
    steward = bearer(idp, "steward", sub="rejecting-steward")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        request_id = http.post("/v1/queries", json=NEEDS_APPROVAL, headers=researcher).json()["request_id"]
        rejected = http.post(
            f"/v1/steward/approvals/{request_id}", json={"approve": False, "reason": "no ethics approval"},
            headers=steward,
        )  # fmt: skip
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
        polled = http.get(f"/v1/queries/{request_id}", headers=researcher).json()
        assert polled["status"] == "rejected"
        activity = http.get("/v1/steward/activity", headers=steward).json()
        trail = [e for e in entries(http, idp) if e["request_id"] == request_id]
    assert [e["type"] for e in trail][-2:] == ["approval.decided", "query.refused"]
    assert trail[-1]["payload"]["stage"] == "approval"
    assert trail[-1]["payload"]["reasons"] == ["a steward rejected the query: no ethics approval"]
    assert trail[-1]["actor"]["sub"] == "rejected-researcher"
    ended = [g for g in activity["by_agreement"] if g["agreement"] == "DSA-TEST-APPROVAL"]
    assert [(g["outcome"], g["requests"]) for g in ended] == [("refused", 1)]
    assert {"subject": "rejected-researcher", "org": "org-aphp", "refused": 1} in activity["most_refused"]


def test_steward_bodies_of_the_wrong_kind_are_refused_and_change_nothing(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-bodies")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        before = http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"]
        document = http.get("/v1/steward/policy-data/agreements", headers=steward).text
        for headers in ({"Content-Type": "text/plain"}, {}):
            sent = http.put(
                "/v1/steward/policy-data/agreements", content=document.encode(),
                headers={**steward, **headers},
            )  # fmt: skip
            assert sent.status_code == 422, sent.text
            assert sent.json()["field"] == "body" and "application/json" in sent.json()["detail"]
        assert http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"] == before

        # A lone surrogate (JSON's \ud800) is no identifier any source file holds.
        raw = b'{"patients": ["MRN-1", "\\ud800"]}'
        surrogate = http.post(
            "/v1/steward/datasets/cohort/withdrawals", content=raw,
            headers={**steward, "Content-Type": "application/json"},
        )  # fmt: skip
        assert surrogate.status_code == 422 and surrogate.json()["field"] == "patients.1"
        assert http.get("/healthz").status_code == 200


def test_what_the_audit_log_cannot_record_is_refused_and_a_policy_change_undone(
    tmp_site: Site, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    steward = bearer(idp, "steward", sub="steward-unrecorded")
    agreements_file = tmp_site.settings.policy_dir / "data" / "agreements.json"
    app = create_app(tmp_site.settings)
    with serving(app) as url, httpx.Client(base_url=url) as http:
        before = http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"]
        document = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        on_disk = agreements_file.read_bytes()

        def unwritable(*_: Any, **__: Any) -> Any:
            raise StorageError("append failed, nothing was written: disk I/O error")

        monkeypatch.setattr(app.state.runtime, "append_soon", unwritable)
        document["DSA-TEST-OPEN"]["title"] = "a change nobody could audit"
        changed = http.put("/v1/steward/policy-data/agreements", json=document, headers=steward)
        answered = http.post("/v1/queries", json=COUNT, headers=bearer(idp, "researcher"))
        monkeypatch.undo()
        after = http.get("/v1/steward/policy-data", headers=steward).json()["bundle_digest"]
    for refused in (changed, answered):
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["title"] == "The audit log is unavailable" and "disk" not in refused.text
    assert after == before and agreements_file.read_bytes() == on_disk
