"""Every refusal ends in the audit log exactly once: a steward's, an auditor's, a researcher's poll, the
framework's own (no such route, wrong method), and a query's, each with its actor and route but never the
path, and never what the caller sent (an id, a name) or text the log must not hold."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_site import bearer, running_gateway, verify_exported_log
from oidc_issuer import LoopbackTestIssuer

from gateway.refusal import UNRECORDED_REASONS

QUERY = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}, "kind": "count",
}  # fmt: skip


def size(http: httpx.Client, idp: LoopbackTestIssuer) -> int:
    page = http.get("/v1/audit/entries", params={"start": 0, "end": 0}, headers=bearer(idp, "auditor"))
    return int(page.json()["size"])


def entries_since(http: httpx.Client, idp: LoopbackTestIssuer, start: int) -> list[dict[str, Any]]:
    """The entries appended since `start`, decoded, without the auditor's own reads (which append none)."""
    page = http.get("/v1/audit/entries", params={"start": start}, headers=bearer(idp, "auditor")).json()
    return [json.loads(base64.b64decode(e["entry"])) for e in page["entries"]]


def refused_once(http: httpx.Client, idp: LoopbackTestIssuer, start: int, route: str) -> dict[str, Any]:
    """The one `request.refused` entry for `route` since `start` (failing if there are none or several)."""
    found = [
        e for e in entries_since(http, idp, start)
        if e["type"] == "request.refused" and e["payload"]["route"] == route
    ]  # fmt: skip
    assert len(found) == 1, f"{len(found)} request.refused entries for {route}"
    return found[0]


def test_steward_refusals_are_audited_with_the_steward_and_the_route(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-audited")
    start = size(http, idp)
    invalid = http.put("/v1/steward/policy-data/agreements", json={"DSA-X": {"title": 1}}, headers=steward)
    assert invalid.status_code == 422
    entry = refused_once(http, idp, start, "PUT:replace_policy_document")
    assert entry["payload"]["refusal"] == "bad_request" and entry["payload"]["title"] == "Invalid policy data"
    assert "reasons" not in entry["payload"] and entry["actor"]["sub"] == "steward-audited"

    start = size(http, idp)
    assert http.get("/v1/steward/activity", params={"hours": 0}, headers=steward).status_code == 422
    entry = refused_once(http, idp, start, "GET:activity")
    assert entry["payload"]["field"] == "hours"

    start = size(http, idp)
    unknown = http.post(
        "/v1/steward/approvals/req-unknown", json={"approve": True, "reason": "ok"}, headers=steward
    )
    assert unknown.status_code == 404
    assert refused_once(http, idp, start, "POST:decide")["payload"]["refusal"] == "not_found"


def test_auditor_refusals_are_audited(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    start = size(http, idp)
    bad = http.get("/v1/audit/entries", params={"start": 5, "end": 2}, headers=bearer(idp, "auditor"))
    assert bad.status_code == 422
    entry = refused_once(http, idp, start, "GET:entries")
    assert entry["payload"] == {
        "route": "GET:entries", "refusal": "bad_request", "field": "start", "title": "Invalid range",
    }  # fmt: skip


def test_polling_an_unknown_request_is_audited_without_the_id_asked_for(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = size(http, idp)
    other = http.get("/v1/queries/John-Smith-1970", headers=bearer(idp, "researcher", sub="nosy-researcher"))
    assert other.status_code == 404 and "John-Smith-1970" not in other.text  # not even to the caller
    entry = refused_once(http, idp, start, "GET:poll")
    assert entry["payload"] == {"route": "GET:poll", "refusal": "not_found", "title": "No such request"}
    assert entry["actor"]["sub"] == "nosy-researcher" and "John" not in json.dumps(entry)


def test_an_invalid_body_outside_queries_is_a_request_refused_naming_the_field(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = size(http, idp)
    unexplained = http.post(
        "/v1/steward/approvals/req-x", json={"approve": True}, headers=bearer(idp, "steward")
    )
    assert unexplained.status_code == 422
    entry = refused_once(http, idp, start, "POST:decide")
    assert entry["payload"]["field"] == "reason" and entry["payload"]["title"] == "Invalid request"
    assert "query.refused" not in [e["type"] for e in entries_since(http, idp, start)]


def test_policy_reasons_quoting_unrecordable_text_are_audited_as_a_fixed_sentence(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = size(http, idp)
    response = http.post("/v1/queries", json={**QUERY, "kind": "crosstab", "group_by": ["x1234567"]},
                         headers=bearer(idp, "researcher"))  # fmt: skip
    assert response.status_code == 403 and "x1234567" in response.json()["detail"]  # the researcher's input
    entries = entries_since(http, idp, start)
    decided = [e for e in entries if e["type"] == "query.decided"]
    refused = [e for e in entries if e["type"] == "query.refused"]
    assert len(decided) == 1 and decided[0]["payload"]["decision"] == "deny"
    assert decided[0]["payload"]["reasons"] == [UNRECORDED_REASONS]
    assert len(refused) == 1 and refused[0]["payload"]["reasons"] == [UNRECORDED_REASONS]
    assert "x1234567" not in json.dumps(entries)


@pytest.mark.parametrize(("method", "path", "refusal"), [
    ("GET", "/v1/patients/MRN-00417723", "not_found"),
    ("DELETE", "/v1/queries", "bad_request"),
])  # fmt: skip
def test_the_frameworks_refusals_are_audited_without_the_path(
    http: httpx.Client, idp: LoopbackTestIssuer, method: str, path: str, refusal: str
) -> None:
    start = size(http, idp)
    response = http.request(method, path, headers=bearer(idp, "researcher"))
    assert response.status_code in (404, 405)
    assert response.headers["content-type"] == "application/problem+json"
    found = [e for e in entries_since(http, idp, start) if e["type"] == "request.refused"]
    assert len(found) == 1 and found[0]["payload"]["refusal"] == refusal
    assert found[0]["payload"]["route"].startswith(f"{method}:")
    assert "MRN" not in json.dumps(found)


def test_a_name_the_caller_sent_stays_out_of_the_audit_log(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = size(http, idp)
    response = http.get("/v1/steward/policy-data/jane.doe@hospital.example", headers=bearer(idp, "steward"))
    assert response.status_code == 404
    entry = refused_once(http, idp, start, "GET:policy_document")
    assert entry["payload"]["title"] == "No such policy data"
    assert "jane.doe" not in json.dumps(entries_since(http, idp, start))


def test_refusals_audited_where_they_were_raised_are_not_audited_twice(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = size(http, idp)
    assert http.post("/v1/queries", json=QUERY, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/v1/steward/approvals", headers=bearer(idp, "researcher")).status_code == 403
    denied = http.post("/v1/queries", json={**QUERY, "agreement": "DSA-TEST-EXPIRED"},
                       headers=bearer(idp, "researcher"))  # fmt: skip
    assert denied.status_code == 403
    types = [e["type"] for e in entries_since(http, idp, start)]
    assert types.count("auth.failed") == 2 and types.count("query.refused") == 1
    assert "request.refused" not in types


def test_a_spec_naming_unrecordable_text_is_refused_and_audited_by_its_title(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = size(http, idp)
    response = http.post(
        "/v1/queries", json={**QUERY, "dataset": "mrn0012345678"}, headers=bearer(idp, "researcher")
    )
    assert response.status_code == 422 and "does not record" in response.json()["detail"]
    entry = refused_once(http, idp, start, "POST:submit")
    assert entry["payload"] == {
        "route": "POST:submit", "refusal": "bad_request", "title": "Invalid query", "field": "dataset"
    }  # fmt: skip
    assert "0012345678" not in json.dumps(entries_since(http, idp, start))


def test_a_failure_nothing_handled_is_a_500_problem_audited_and_logged_by_its_class_only(
    tmp_site: Any, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A state database that fails mid-withdrawal: the driver's message quotes the statement's parameters,
    # here the pseudonyms of the patients being withdrawn.
    from gateway.routes import steward

    secret = "c1d2a8fb-ba29-7377-811c-65f54b5dbe1a"

    def failing(*_: Any) -> int:
        raise RuntimeError(f"database is locked [parameters: ('cohort', '{secret}')]")

    monkeypatch.setattr(steward, "withdraw", failing)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        start = size(http, idp)
        body = {"patients": ["MRN-DE-12390526"]}
        with caplog.at_level("DEBUG"):
            answer = http.post(
                "/v1/steward/datasets/cohort/withdrawals", json=body, headers=bearer(idp, "steward")
            )
        assert answer.status_code == 500
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["title"] == "Internal error"
        refused = refused_once(http, idp, start, "POST:withdraw_consent")
        assert refused["payload"]["title"] == "Internal error"
        assert refused["actor"] is not None
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "RuntimeError" in logged
    assert secret not in logged and secret not in answer.text and "MRN-DE" not in logged


def test_no_engine_writes_statement_parameters_into_its_errors(tmp_path: Any) -> None:
    # SQLAlchemy quotes a failed statement's parameters in its message unless told not to; they are
    # pseudonyms, withdrawn patients, audit entries.
    import sqlalchemy as sa

    from audit.storage import make_engines
    from gateway.state import GatewayState
    from pseudonymize.store import Store

    state = GatewayState(f"sqlite:///{tmp_path / 'state.db'}")
    engines = make_engines(f"sqlite:///{tmp_path / 'audit.db'}")
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        used = [state._engine, engines.writer, engines.reader, store._engine]
        for engine in used:
            assert engine.hide_parameters, engine.url
            with pytest.raises(sa.exc.DBAPIError) as err, engine.connect() as conn:
                conn.execute(sa.text("SELECT no_such_function(:v)"), {"v": "secret-value-7"})
            assert "secret-value-7" not in str(err.value)
    engines.dispose()


def test_what_the_caller_typed_into_a_kind_or_a_key_is_not_repeated(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher")
    start = size(http, idp)
    typed = "Hans Mueller 1950-04-03"
    for body in (QUERY | {"kind": typed}, QUERY | {typed: 1}):
        for path in ("/v1/queries", "/v1/federated-queries"):
            answer = http.post(path, json=body, headers=researcher)
            assert answer.status_code == 422, answer.text
            assert "Mueller" not in answer.text, answer.text
    assert not any("Mueller" in json.dumps(e) for e in entries_since(http, idp, start))
    unknown = http.post("/v1/queries", json=QUERY | {"kind": typed}, headers=researcher).json()
    assert unknown["field"] == "kind" and "expected one of" in unknown["detail"]
    # A key shaped as a field name is named, so the caller sees which.
    assert http.post("/v1/queries", json=QUERY | {"limit": 1}, headers=researcher).json()["field"] == "limit"


def test_an_approved_answer_the_state_database_does_not_take_is_refused_after_its_release(
    tmp_site: Any, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The state database fails as the approved answer is stored (locked past its busy timeout): the log
    # already holds the release, so it must also say that the answer never reached the researcher, and the
    # query goes back to the stewards instead of staying claimed with its answer lost.
    import sqlalchemy as sa

    from gateway.state import GatewayState

    store = GatewayState.update_request
    failing = {"armed": False}

    def update_request(self: GatewayState, request_id: str, **values: Any) -> bool:
        if failing["armed"] and values.get("status") == "released":
            failing["armed"] = False
            raise sa.exc.OperationalError("UPDATE requests", {}, Exception("database is locked"))
        return store(self, request_id, **values)

    monkeypatch.setattr(GatewayState, "update_request", update_request)
    researcher = bearer(idp, "researcher", sub="approval-researcher")
    steward = bearer(idp, "steward", sub="approval-steward")
    spec = {**QUERY, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "bmi"}}
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        queued = http.post("/v1/queries", json=spec, headers=researcher)
        assert queued.status_code == 202
        request_id = queued.json()["request_id"]
        start = size(http, idp)
        failing["armed"] = True
        approve = {"approve": True, "reason": "within the protocol"}
        answer = http.post(f"/v1/steward/approvals/{request_id}", json=approve, headers=steward)
        assert answer.status_code == 503
        assert answer.json()["title"] == "Answer not stored"
        assert "never reached the researcher" in answer.json()["detail"]
        trail = [
            (e["type"], e["payload"].get("stage"))
            for e in entries_since(http, idp, start)
            if e.get("request_id") == request_id
        ]
        assert [t for t, _ in trail] == [
            "approval.decided", "query.decided", "query.executed", "query.released", "query.refused",
        ]  # fmt: skip
        assert trail[-1] == ("query.refused", "approval")
        # Back in the queue, and approved again it is released and collected.
        polled = http.get(f"/v1/queries/{request_id}", headers=researcher).json()
        assert polled["status"] == "pending_approval"
        again = http.post(f"/v1/steward/approvals/{request_id}", json=approve, headers=steward)
        assert again.status_code == 200 and again.json()["status"] == "released"
        collected = http.get(f"/v1/queries/{request_id}", headers=researcher)
        assert collected.status_code == 200 and collected.json()["kind"] == "summary"
        # An auditor finds every release of that trail allowed: the second approval's included.
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    verify_exported_log(export, tmp_site.settings, tmp_path)


def test_an_approved_answer_whose_claim_lapsed_is_refused_after_its_release(
    tmp_site: Any, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The approving steward's claim lapsed during a long run and another steward took the request: the
    # answer of the first run is not kept, and its release in the log is followed by a refusal saying so.
    from gateway.state import GatewayState

    store = GatewayState.update_request
    lapsed = {"armed": False}

    def update_request(self: GatewayState, request_id: str, **values: Any) -> bool:
        if lapsed["armed"] and values.get("status") == "released":
            lapsed["armed"] = False
            return False
        return store(self, request_id, **values)

    monkeypatch.setattr(GatewayState, "update_request", update_request)
    researcher = bearer(idp, "researcher", sub="lapsed-researcher")
    steward = bearer(idp, "steward", sub="lapsed-steward")
    spec = {**QUERY, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "bmi"}}
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        request_id = http.post("/v1/queries", json=spec, headers=researcher).json()["request_id"]
        start = size(http, idp)
        lapsed["armed"] = True
        approve = {"approve": True, "reason": "within the protocol"}
        answer = http.post(f"/v1/steward/approvals/{request_id}", json=approve, headers=steward)
        assert answer.status_code == 409
        trail = [e for e in entries_since(http, idp, start) if e.get("request_id") == request_id]
        assert [e["type"] for e in trail][-2:] == ["query.released", "query.refused"]
        assert "another steward took the request" in trail[-1]["payload"]["reasons"][0]
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    verify_exported_log(export, tmp_site.settings, tmp_path)
