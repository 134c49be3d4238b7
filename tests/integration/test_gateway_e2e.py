"""The site gateway end to end over real HTTP: roles, every kind, disclosure rules and their attacks,
consent withdrawal, agreement terms, approvals, fail-closed policy, and an audit log that verifies."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from gateway_site import (
    TEST_AGREEMENTS,
    Site,
    audit_size,
    bearer,
    entries_since,
    running_gateway,
    verify_exported_log,
)
from oidc_issuer import LoopbackTestIssuer

PURPOSE = {"duo": ["DUO:0000006"]}


def spec(kind: str, agreement: str = "DSA-TEST-OPEN", **extra: Any) -> dict[str, Any]:
    return {"dataset": "cohort", "agreement": agreement, "purpose": PURPOSE, "kind": kind, **extra}


def ask(
    http: httpx.Client, idp: LoopbackTestIssuer, body: dict[str, Any], sub: str = "researcher-1"
) -> httpx.Response:
    return http.post("/v1/queries", json=body, headers=bearer(idp, "researcher", sub=sub))


# -- identity and roles --------------------------------------------------------------------------------------


def test_every_endpoint_checks_its_role(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    assert http.post("/v1/queries", json=spec("count")).status_code == 401
    bad = http.post("/v1/queries", json=spec("count"), headers={"Authorization": "Bearer not.a.token"})
    assert bad.status_code == 401 and bad.headers["content-type"].startswith("application/problem+json")
    assert "not.a.token" not in bad.text
    assert http.post("/v1/queries", json=spec("count"), headers=bearer(idp, "steward")).status_code == 403
    assert http.get("/v1/steward/datasets", headers=bearer(idp, "researcher")).status_code == 403
    assert http.get("/v1/audit/checkpoint", headers=bearer(idp, "researcher")).status_code == 403
    assert http.get("/v1/steward/datasets", headers=bearer(idp, "steward")).status_code == 200
    assert http.get("/v1/audit/checkpoint", headers=bearer(idp, "auditor")).status_code == 200
    expired = idp.token(sub="r", org="org-aphp", country="FR", roles=["researcher"], exp=1)
    response = http.post("/v1/queries", json=spec("count"), headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and expired not in response.text


def test_invalid_spec_is_a_422_naming_the_field(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    body = spec("count", filters={"column": "bmi", "op": "~=", "value": 3})
    response = ask(http, idp, body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["status"] == 422 and "filters" in problem["field"]
    unknown = ask(http, idp, spec("histogram", params={"column": "bmi", "edges": [30, 20]}))
    assert unknown.status_code == 422 and "edges" in unknown.json()["detail"]
    missing = ask(http, idp, {**spec("count"), "dataset": "nope"})
    assert missing.status_code == 404


# -- the five kinds ------------------------------------------------------------------------------------------


def _frame_total(rows: list[dict[str, Any]]) -> int:
    return sum(int(r["count"]) for r in rows if r.get("margin") is None and r["count"] is not None)


def test_count_and_crosstab_release_protected_tables(
    http: httpx.Client, idp: LoopbackTestIssuer, site: Site
) -> None:
    total = ask(http, idp, spec("count"))
    assert total.status_code == 200, total.text
    body = total.json()
    assert body["status"] == "released" and body["result_hash"].startswith("sha256:")
    (row,) = body["rows"]
    admitted = row["count"]
    assert (
        0 < admitted < site.source.num_rows
    )  # the consent filter removed withdrawn and out-of-scope patients
    cross = ask(http, idp, spec("crosstab", group_by=["sex", "smoking"])).json()
    cells = [r for r in cross["rows"] if r["margin"] is None]
    assert {r["sex"] for r in cells} == {"F", "M"} and len(cells) == 6
    grand = [r for r in cross["rows"] if r["margin"] == "total"]
    assert grand and grand[0]["count"] == admitted
    assert cross["disclosure"]["min_cell_count"] == 10


def test_summary_histogram_and_quantiles(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    summary = ask(http, idp, spec("summary", group_by=["sex"], params={"column": "bmi"})).json()
    for row in summary["rows"]:
        assert row["n"] >= 10 and 15 < row["mean"] < 45 and row["variance"] > 0
    hist = ask(http, idp, spec("histogram", params={"column": "bmi", "edges": [20, 25, 30, 35]})).json()
    assert [r["bin"] for r in hist["rows"]] == [0, 1, 2, 3, 4]
    assert hist["rows"][0]["lower"] is None and hist["rows"][1]["lower"] == 20
    quant = ask(http, idp, spec("quantiles", params={"column": "bmi", "probs": [0.25, 0.5, 0.75]})).json()
    (row,) = quant["rows"]
    assert row["q0.25"] <= row["q0.5"] <= row["q0.75"]


# -- disclosure control and its attacks ----------------------------------------------------------------------


def test_group_by_isolating_a_patient_is_suppressed(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    # Three columns fine enough to isolate patients: refused whole, since a cell hidden there would come
    # back from the two-column tables; nothing of the table is shown.
    wide = ask(http, idp, spec("crosstab", group_by=["icd10", "age_band", "sex"]))
    assert wide.status_code == 403 and "three or more dimensions" in wide.json()["detail"]
    assert "rows" not in wide.json()
    body = ask(http, idp, spec("crosstab", group_by=["icd10", "age_band"])).json()
    small = [r for r in body["rows"] if r["suppressed"]]
    assert small, "a fine two-way table must have small cells"
    for r in small:
        assert r["count"] is None and r["suppression_reason"] in ("below min_cell_count", "complementary")
    assert all(r["count"] is None or r["count"] >= 10 or r["count"] == 0 for r in body["rows"])
    assert body["disclosure"]["suppressed"] == len(small)


def test_suppressed_cell_cannot_be_recovered_from_margins(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    body = ask(http, idp, spec("crosstab", group_by=["icd10", "sex"])).json()
    rows = body["rows"]
    for dim, other in (("icd10", "sex"), ("sex", "icd10")):
        for level in {r[dim] for r in rows if r["margin"] is None}:
            line = [r for r in rows if r["margin"] is None and r[dim] == level]
            hidden = [r for r in line if r["suppressed"]]
            margin = [r for r in rows if r["margin"] is not None and r[dim] == level and r[other] is None]
            if hidden and margin and margin[0]["count"] is not None:
                assert len(hidden) >= 2, f"a lone suppressed cell in {dim}={level} is recoverable"


def test_filter_with_tiny_complement_is_refused(
    http: httpx.Client, idp: LoopbackTestIssuer, site: Site
) -> None:
    body = spec("count", filters={"column": "bmi", "op": "<", "value": 1000})
    assert ask(http, idp, body).status_code == 200  # excludes nobody: the same as the unfiltered count
    # A threshold leaving out only the five heaviest patients (all of them surely in the query population).
    bmi = sorted(site.source["bmi"].to_pylist(), reverse=True)
    cut = (bmi[4] + bmi[5]) / 2
    tracker = spec("count", filters={"column": "bmi", "op": "<", "value": cut})
    response = ask(http, idp, tracker)
    assert response.status_code == 403, response.text
    assert "leaves out fewer than 10 rows" in response.json()["detail"]


def test_differencing_pair_cannot_isolate_one_patient(
    http: httpx.Client, idp: LoopbackTestIssuer, site: Site
) -> None:
    # count(everyone) - count(everyone but the heaviest patient) would be that one patient.
    everyone = ask(http, idp, spec("count", filters={"column": "sex", "op": "in", "value": ["F", "M"]}))
    assert everyone.status_code == 200
    bmi = sorted(site.source["bmi"].to_pylist(), reverse=True)
    all_but_one = spec("count", filters={"not": {"column": "bmi", "op": ">", "value": (bmi[0] + bmi[1]) / 2}})
    refused = ask(http, idp, all_but_one)
    assert refused.status_code == 403 and "leaves out fewer than 10 rows" in refused.json()["detail"]


def test_identical_query_limit(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    body = spec("count", group_by=["smoking"])
    for _ in range(3):
        assert ask(http, idp, body, sub="repeater").status_code == 200
    limited = ask(http, idp, body, sub="repeater")
    assert (
        limited.status_code == 429
        and "DSA-TEST-OPEN allows this exact query 3 times" in limited.json()["detail"]
    )
    assert ask(http, idp, body, sub="someone-else").status_code == 200


def test_relabelling_a_query_does_not_reset_its_limit(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    # Labels that do not change the answer (which ethics approval, the destination) would otherwise make
    # each asking a new query, and the limit a formality.
    base = spec("count", group_by=["sex"], filters={"column": "bmi", "op": ">", "value": 21.5})

    def approved(ethics: str, **extra: Any) -> dict[str, Any]:
        return {**base, "purpose": {**PURPOSE, "ethics_approval_id": ethics}, **extra}

    answers = [
        ask(http, idp, body, sub="relabeller")
        for body in (approved("EC-1"), approved("EC-2", destination="FR"), approved("EC-3"))
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({json.dumps(a.json()["rows"], sort_keys=True) for a in answers}) == 1
    fourth = ask(http, idp, approved("EC-4"), sub="relabeller")
    assert fourth.status_code == 429 and "allows this exact query 3 times; this is time 4" in fourth.text
    # Without an ethics approval the consent filter admits other patients: another answer, another query.
    unapproved = ask(http, idp, base, sub="relabeller")
    assert unapproved.status_code == 200 and unapproved.json()["rows"] != answers[0].json()["rows"]
    other = approved("EC-5", filters={"column": "bmi", "op": ">", "value": 21.6})
    assert ask(http, idp, other, sub="relabeller").status_code == 200


# -- agreement terms, differential privacy, approval ---------------------------------------------------------


def test_expired_agreement_and_dp_requirement_are_refused_with_reasons(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    expired = ask(http, idp, spec("count", agreement="DSA-TEST-EXPIRED"))
    assert (
        expired.status_code == 403 and "DSA-TEST-EXPIRED expired on 2026-06-30" in expired.json()["reasons"]
    )
    dp = ask(http, idp, spec("count", agreement="DSA-TEST-DP"))
    assert dp.status_code == 403 and "differential privacy" in dp.json()["detail"]
    not_allowed = ask(http, idp, spec("count", group_by=["postcode_area", "patient_id"]))
    assert not_allowed.status_code == 403


def test_a_glm_session_is_refused_where_the_agreement_requires_rounded_counts(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    """A session releases exact sums (XᵀWX's intercept entry is the row count, a binomial score the case
    count), which no rounding can protect: an agreement that requires counts rounded gets no session, as
    one that requires differential privacy does, and the refusal is audited the same way. Rounding to 1,
    or not at all, is exact and opens a session."""
    agreements_file = tmp_site.root / "policies/data/agreements.json"
    agreements = json.loads(agreements_file.read_text())
    terms = TEST_AGREEMENTS["DSA-TEST-OPEN"]
    agreements["DSA-TEST-ROUND-TO-1"] = {**terms, "thresholds": {**terms["thresholds"], "round_to": 1}}
    agreements_file.write_text(json.dumps(agreements, indent=2))
    researcher = bearer(idp, "researcher", sub="glm-rounding")
    model = {"outcome": "bmi", "family": "gaussian", "numeric": ["hba1c"]}

    def session(http: httpx.Client, agreement: str) -> httpx.Response:
        body = {"dataset": "cohort", "agreement": agreement, "purpose": PURPOSE, "model": model}
        return http.post("/v1/glm/sessions", json=body, headers=researcher)

    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        start = audit_size(http, idp)
        rounded, dp = session(http, "DSA-TEST-ROUNDED"), session(http, "DSA-TEST-DP")
        assert rounded.status_code == 403 and dp.status_code == 403, (rounded.text, dp.text)
        reason = (
            "DSA-TEST-ROUNDED requires counts rounded to multiples of 5, which a GLM's exact sums (its row "
            "and case counts) cannot honour, so the GLM is refused"
        )
        assert rounded.json()["title"] == "Rounded counts required"
        assert rounded.json()["reasons"] == [reason]
        audited = {
            e["request_id"]: e["payload"]
            for e in entries_since(http, idp, start)
            if e["type"] == "glm.refused"
        }
        refusal, dp_refusal = audited[rounded.json()["request_id"]], audited[dp.json()["request_id"]]
        assert refusal["stage"] == dp_refusal["stage"] == "decide"
        assert refusal["reasons"] == [reason] and set(refusal) == set(dp_refusal)
        assert "glm.session_opened" not in [e["type"] for e in entries_since(http, idp, start)]
        for agreement in ("DSA-TEST-ROUND-TO-1", "DSA-TEST-OPEN"):  # round_to 1, and no round_to at all
            opened = session(http, agreement)
            assert opened.status_code == 200, opened.text
            closed = http.delete(f"/v1/glm/sessions/{opened.json()['session']}", headers=researcher)
            assert closed.status_code == 200


def test_approval_flow(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    body = spec("summary", agreement="DSA-TEST-APPROVAL", params={"column": "hba1c"})
    pending = ask(http, idp, body, sub="patient-researcher")
    assert pending.status_code == 202
    request_id = pending.json()["request_id"]
    poll = http.get(f"/v1/queries/{request_id}", headers=bearer(idp, "researcher", sub="patient-researcher"))
    assert poll.json()["status"] == "pending_approval"
    other = http.get(f"/v1/queries/{request_id}", headers=bearer(idp, "researcher", sub="someone-else"))
    assert other.status_code == 404
    queue = http.get("/v1/steward/approvals", headers=bearer(idp, "steward", sub="steward-1")).json()
    assert request_id in [q["request_id"] for q in queue]
    decided = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "ethics ok"},
                        headers=bearer(idp, "steward", sub="steward-1"))  # fmt: skip
    assert decided.status_code == 200 and decided.json()["status"] == "released"
    # The steward learns that it was released, not the answer: that is the researcher's to collect.
    assert decided.json() == {"request_id": request_id, "status": "released", "reasons": []}
    again = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": False, "reason": "late"},
                      headers=bearer(idp, "steward", sub="steward-1"))  # fmt: skip
    assert again.status_code == 409
    released = http.get(
        f"/v1/queries/{request_id}", headers=bearer(idp, "researcher", sub="patient-researcher")
    )
    assert released.json()["status"] == "released" and released.json()["rows"][0]["n"] >= 10


def test_a_subject_the_log_records_by_digest_still_owns_its_queued_query(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    opaque = "x" * 64  # an issuer's opaque subject: the audit log and the state name it by its digest
    body = spec("summary", agreement="DSA-TEST-APPROVAL", params={"column": "hba1c"})
    pending = ask(http, idp, body, sub=opaque)
    assert pending.status_code == 202, pending.text
    request_id = pending.json()["request_id"]
    poll = http.get(f"/v1/queries/{request_id}", headers=bearer(idp, "researcher", sub=opaque))
    assert poll.status_code == 200 and poll.json()["status"] == "pending_approval"
    own = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "mine"},
                    headers=bearer(idp, "steward", "researcher", sub=opaque))  # fmt: skip
    assert own.status_code == 403, own.text  # no approving one's own query, however one is named


def approved_summary(http: httpx.Client, idp: LoopbackTestIssuer, researcher: str) -> str:
    """The id of a summary that needed a steward, approved and answered, waiting for `researcher`."""
    body = spec("summary", agreement="DSA-TEST-APPROVAL", params={"column": "bmi"})
    request_id: str = ask(http, idp, body, sub=researcher).json()["request_id"]
    decided = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "ok"},
                        headers=bearer(idp, "steward", sub="steward-1"))  # fmt: skip
    assert decided.status_code == 200 and decided.json()["status"] == "released"
    return request_id


def test_an_approved_answer_is_released_only_if_policy_still_allows_the_researcher(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    request_id = approved_summary(http, idp, "moving-researcher")
    # The researcher has since moved to an organisation that is no party to the agreement.
    moved = bearer(idp, "researcher", sub="moving-researcher", org="org-elsewhere", country="FR")
    refused = http.get(f"/v1/queries/{request_id}", headers=moved)
    assert refused.status_code == 403, refused.text
    assert "rows" not in refused.json() and any("org-elsewhere" in r for r in refused.json()["reasons"])
    still = http.get(f"/v1/queries/{request_id}", headers=bearer(idp, "researcher", sub="moving-researcher"))
    assert still.status_code == 200 and still.json()["rows"]


def test_an_approved_answer_is_not_released_under_a_policy_changed_since(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    researcher = bearer(idp, "researcher", sub="patient-researcher")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        request_id = approved_summary(http, idp, "patient-researcher")
        # The agreement's threshold is tightened after the answer was computed under the old one.
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        agreements["DSA-TEST-APPROVAL"]["thresholds"]["min_cell_count"] = 50
        assert (
            http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward).status_code
            == 200
        )
        refused = http.get(f"/v1/queries/{request_id}", headers=researcher)
        assert refused.status_code == 403 and "rows" not in refused.json()
        assert any("policy changed" in r for r in refused.json()["reasons"])
        assert not any("withdrew" in r or "new version" in r for r in refused.json()["reasons"])
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).text
    mine = [json.loads(line) for line in export.splitlines() if request_id in line]
    assert [e["type"] for e in mine][-2:] == ["query.decided", "query.refused"]


def test_a_withdrawal_while_the_query_waits_is_applied_by_the_approved_run(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    researcher = bearer(idp, "researcher", sub="patient-researcher")
    mrns = tmp_site.source["patient_id"].to_pylist()[:3]
    body = spec("summary", agreement="DSA-TEST-APPROVAL", params={"column": "bmi"})
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        request_id = ask(http, idp, body, sub="patient-researcher").json()["request_id"]
        done = http.post("/v1/steward/datasets/cohort/withdrawals", json={"patients": mrns}, headers=steward)
        assert done.status_code == 200
        time.sleep(1.1)  # withdrawal times are to the second: the approval runs in a later one
        decided = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "ok"},
                            headers=steward)  # fmt: skip
        assert decided.status_code == 200 and decided.json()["status"] == "released"
        collected = http.get(f"/v1/queries/{request_id}", headers=researcher)
    assert collected.status_code == 200, collected.text
    assert collected.json()["rows"] and collected.json()["computed_at"]


def test_an_approved_answer_is_not_released_after_a_consent_withdrawal(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    researcher = bearer(idp, "researcher", sub="patient-researcher")
    mrns = tmp_site.source["patient_id"].to_pylist()[:3]
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        request_id = approved_summary(http, idp, "patient-researcher")
        done = http.post("/v1/steward/datasets/cohort/withdrawals", json={"patients": mrns}, headers=steward)
        assert done.status_code == 200
        refused = http.get(f"/v1/queries/{request_id}", headers=researcher)
    assert refused.status_code == 403 and "rows" not in refused.json()
    assert any("withdrew consent" in r for r in refused.json()["reasons"])


# -- consent withdrawal --------------------------------------------------------------------------------------


def test_consent_withdrawal_takes_effect_on_the_next_query(tmp_site: Site, idp: LoopbackTestIssuer) -> None:
    table = tmp_site.source
    admitted = pc.and_(pc.invert(table["consent_withdrawn"]), pc.equal(table["consent_duo"], "DUO:0000042"))
    mrns = table.filter(admitted)["patient_id"].to_pylist()[:25]
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        before = ask(http, idp, spec("count")).json()["rows"][0]["count"]
        steward = bearer(idp, "steward", sub="steward-1")
        done = http.post("/v1/steward/datasets/cohort/withdrawals", json={"patients": mrns}, headers=steward)
        assert done.status_code == 200
        assert done.json() == {"dataset": "cohort", "patients": 25, "new": 25, "matched": 25}
        assert not any(m in done.text for m in mrns)
        after = ask(http, idp, spec("count")).json()["rows"][0]["count"]
    assert after == before - 25


# -- fail closed ---------------------------------------------------------------------------------------------


class _PanickingEngine:
    name = "embedded"
    bundle_digest = "0" * 64

    def evaluate(self, policy_input: object) -> object:
        raise BaseException("engine panic")

    def replace_bundle(self, bundle: object) -> None:
        return None


def test_policy_engine_failure_is_an_audited_403(
    tmp_site: Site, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.decision import PolicyDecisionPoint

    original = PolicyDecisionPoint.__init__

    def broken(self: PolicyDecisionPoint, settings: Any, engine: Any = None) -> None:
        original(self, settings, engine=_PanickingEngine())  # type: ignore[arg-type]

    monkeypatch.setattr(PolicyDecisionPoint, "__init__", broken)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        response = ask(http, idp, spec("count"))
        assert response.status_code == 403
        assert response.json()["reasons"][0].startswith("policy evaluation failed")
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    assert b"policy evaluation failed" in export and b'"query.refused"' in export


def test_a_check_that_fails_when_a_known_shape_is_built_late_is_an_audited_refusal(
    tmp_site: Site, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query whose shape was built before has its selects built only if the run needs them; should that
    build raise (every such check is settled by the shape today), the query is refused as invalid."""
    import importlib

    from gateway.query import QuerySpecError, duckdb_dialect

    compile_module = importlib.import_module("gateway.query.compile")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        assert ask(http, idp, spec("count", group_by=["sex"])).status_code == 200

        def failing(*args: Any) -> Any:
            raise QuerySpecError("a check the shape did not settle", "group_by[0]")

        monkeypatch.setattr(compile_module, "_build", failing)
        duckdb_dialect.TEMPLATES.clear()  # so the run has to build the select
        response = ask(http, idp, spec("count", group_by=["sex"]))
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "group_by[0]" and "rows" not in response.json()
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    assert b"a check the shape did not settle" in export and b'"query.refused"' in export


def test_nothing_is_released_when_the_decision_could_not_be_written(
    tmp_site: Site, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit import storage

    original = storage.write_batch

    def losing_decisions(conn: Any, entries: list[tuple[int, bytes, bytes]], *rest: Any) -> None:
        if any(b'"query.decided"' in data for _, _, data in entries):
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        original(conn, entries, *rest)

    monkeypatch.setattr(storage, "write_batch", losing_decisions)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        response = ask(http, idp, spec("count", group_by=["sex"]))
        assert response.status_code == 503, response.text
        assert "rows" not in response.json()
        monkeypatch.setattr(storage, "write_batch", original)
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    assert b'"query.refused"' in export and b'"query.released"' not in export


# -- audit of a whole session --------------------------------------------------------------------------------


def test_session_audit_log_verifies_and_holds_no_identifier_or_token(
    tmp_site: Site, idp: LoopbackTestIssuer, tmp_path: Any
) -> None:
    tokens = []
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        for body in (
            spec("count"),
            spec("crosstab", group_by=["sex"]),
            spec("count", agreement="DSA-TEST-EXPIRED"),
        ):
            header = bearer(idp, "researcher")
            tokens.append(header["Authorization"].split()[1])
            http.post("/v1/queries", json=body, headers=header)
        http.post("/v1/queries", json=spec("count"), headers={"Authorization": "Bearer forged.token.value"})
        # An approved answer collected, refused once (its researcher moved), then collected again: each
        # release has a decision of its own, which the auditor's release check below requires.
        request_id = approved_summary(http, idp, "collector")
        moved = bearer(idp, "researcher", sub="collector", org="org-elsewhere", country="FR")
        for header, status in ((bearer(idp, "researcher", sub="collector"), 200), (moved, 403),
                               (bearer(idp, "researcher", sub="collector"), 200)):  # fmt: skip
            assert http.get(f"/v1/queries/{request_id}", headers=header).status_code == status
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor"))
    assert export.status_code == 200
    verify_exported_log(export.content, tmp_site.settings, tmp_path)
    text = export.content.decode("utf-8", "replace")
    for token in [*tokens, "forged.token.value"]:
        assert token not in text
    for mrn in tmp_site.source["patient_id"].to_pylist()[:200]:
        assert mrn not in text
    for kind in (
        "query.received",
        "query.decided",
        "query.executed",
        "query.released",
        "query.refused",
        "auth.failed",
    ):
        assert f'"{kind}"' in text


def test_openapi_is_served(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert "/v1/queries" in doc["paths"] and "/v1/steward/approvals/{request_id}" in doc["paths"]
    assert base64
    assert json


def test_group_by_a_lab_value_never_lists_rare_values(
    http: httpx.Client, idp: LoopbackTestIssuer, site: Site
) -> None:
    body = ask(http, idp, spec("count", group_by=["hba1c"])).json()
    levels = [r["hba1c"] for r in body["rows"] if r["margin"] is None]
    values = site.source["hba1c"].to_pylist()
    rare = {v for v in values if v is not None and values.count(v) < 10}
    assert rare and not rare & set(levels)
    assert "(other)" in levels


def test_extreme_or_close_quantiles_are_withheld(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    close = ask(http, idp, spec("quantiles", params={"column": "bmi", "probs": [0.05, 0.06]}))
    assert close.status_code == 422 and "multiples of 0.05" in close.json()["detail"]
    by_group = ask(
        http,
        idp,
        spec(
            "quantiles",
            group_by=["smoking", "age_band"],
            params={"column": "bmi", "probs": [0.05, 0.5]},
        ),
    )
    rows = by_group.json()["rows"]
    assert rows and all(r["q0.05"] is None for r in rows if r["n"] is not None and r["n"] * 0.05 < 10)
    assert any(r["q0.5"] is not None for r in rows)
    assert any("withheld" in reason for reason in by_group.json()["disclosure"]["reasons"])


def test_an_open_glm_session_stops_when_the_sites_policy_changes(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    researcher, steward = bearer(idp, "researcher"), bearer(idp, "steward", sub="steward-1")
    model = {"outcome": "bmi", "family": "gaussian", "numeric": ["hba1c"]}
    body = {
        "dataset": "cohort",
        "agreement": "DSA-TEST-OPEN",
        "purpose": {"duo": ["DUO:0000006"]},
        "model": model,
    }
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        opened = http.post("/v1/glm/sessions", json=body, headers=researcher)
        assert opened.status_code == 200, opened.text
        path = f"/v1/glm/sessions/{opened.json()['session']}/iterations"
        step = {"agreement": "DSA-TEST-OPEN", "beta": [0.0, 0.0]}
        assert http.post(path, json=step, headers=researcher).status_code == 200
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
        agreements["DSA-TEST-OPEN"]["thresholds"]["min_cell_count"] += 1
        assert (
            http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward).status_code
            == 200
        )
        stopped = http.post(path, json=step, headers=researcher)
        assert stopped.status_code == 403 and "policy changed" in stopped.json()["reasons"][0]
        # The refusal closed the session: β is accepted in no session any more.
        assert http.post(path, json=step, headers=researcher).status_code == 404
