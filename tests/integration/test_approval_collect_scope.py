"""An approved answer leaves only under the obligations it was computed under: collected with a token whose
organisation or country gives another consent scope, it is refused (audited) and stays at the site."""

from __future__ import annotations

import json
from typing import Any

import httpx
from gateway_site import Site, audit_size, bearer, entries_since, running_gateway, verify_exported_log
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import Principal
from gateway.decision import ConsentFilter, PolicyDecisionPoint
from gateway.pipeline import COMPUTED_UNDER, TERMS_CHANGED, decision_input
from gateway.query import parse_query_spec
from gateway.state import GatewayState
from pseudonymize.store import Store

SUMMARY = {
    "dataset": "cohort", "agreement": "DSA-TEST-APPROVAL", "purpose": {"duo": ["DUO:0000006"]},
    "kind": "summary", "params": {"column": "bmi"},
}  # fmt: skip
FOR_PROFIT = "org-pharmaco"  # a for-profit organisation of the shipped policy data
STEWARD = {"sub": "steward-scope"}


def _with_a_for_profit_party(site: Site) -> None:
    """Make the for-profit organisation a party to the test agreements before the gateway starts (changed
    later, the policy bundle would change too, and a collect would be refused for that alone)."""
    path = site.root / "policies/data/agreements.json"
    agreements = json.loads(path.read_text())
    agreements["DSA-TEST-APPROVAL"]["parties"].append(FOR_PROFIT)
    path.write_text(json.dumps(agreements))


def _consent_filter(site: Site, org: str) -> ConsentFilter:
    """The consent filter the site's policy sets for the summary asked by a researcher of `org`."""
    with Store(site.settings.store_url) as store:
        entry = store.latest("cohort")
    assert entry is not None
    researcher = Principal(
        sub="x", org=org, country="FR", roles=frozenset({"researcher"}), visas=(), issuer="test"
    )
    request = decision_input(researcher, parse_query_spec(SUMMARY), entry)
    decision = PolicyDecisionPoint(site.settings).decide(request)
    assert decision.obligations is not None, decision.reasons
    return decision.obligations.consent_filter


def _approved(http: httpx.Client, idp: LoopbackTestIssuer, researcher: dict[str, str]) -> str:
    """Submit the summary as `researcher` and have a steward approve it; its request id."""
    pending = http.post("/v1/queries", json=SUMMARY, headers=researcher)
    assert pending.status_code == 202, pending.text
    request_id = str(pending.json()["request_id"])
    approved = http.post(
        f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "ethics approval on file"},
        headers=bearer(idp, "steward", **STEWARD),
    )  # fmt: skip
    assert approved.status_code == 200 and approved.json()["status"] == "released", approved.text
    return request_id


def kept_without(state_url: str, request_id: str, member: str) -> None:
    """Keep a released request's answer as an earlier version stored it: without `member`."""
    state = GatewayState(state_url)
    try:
        stored = state.get_request(request_id)
        assert stored is not None and stored.result is not None and member in stored.result
        earlier = {k: v for k, v in stored.result.items() if k != member}
        assert state.update_request(
            request_id, expect="released", status="released", reasons=[], result=earlier,
            decided_by=stored.decided_by,
        )  # fmt: skip
    finally:
        state.close()


def _n(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()["rows"][0]["n"]


def _refused_as_out_of_date(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 403, answer.text
    problem = answer.json()
    assert problem["title"] == "Answer out of date" and "rows" not in problem
    assert TERMS_CHANGED in problem["reasons"] and problem["reasons"][-1] == "submit the query again"
    return list(problem["reasons"])


def test_an_answer_approved_for_a_non_profit_is_refused_to_the_same_researcher_at_a_for_profit(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    _with_a_for_profit_party(tmp_site)
    # Patients who consented to non-profit use only count for a non-profit organisation, not a for-profit.
    non_profit_scope = _consent_filter(tmp_site, "org-aphp")
    assert set(non_profit_scope.allowed_codes) > set(_consent_filter(tmp_site, FOR_PROFIT).allowed_codes)
    non_profit = bearer(idp, "researcher", sub="moving-researcher", org="org-aphp")
    for_profit = bearer(idp, "researcher", sub="moving-researcher", org=FOR_PROFIT)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        request_id = _approved(http, idp, non_profit)
        start = audit_size(http, idp)
        refused = http.get(f"/v1/queries/{request_id}", headers=for_profit)
        reasons = _refused_as_out_of_date(refused)
        assert not any(FOR_PROFIT in r or "DUO:" in r for r in reasons)
        trail = [e for e in entries_since(http, idp, start) if e["request_id"] == request_id]

        # Under the identity it was computed for, the answer still leaves: only its terms stood in the way.
        collected = http.get(f"/v1/queries/{request_id}", headers=non_profit)
        assert _n(collected) > 0 and COMPUTED_UNDER not in collected.json()
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    assert [e["type"] for e in trail] == ["query.decided", "query.refused"]
    assert trail[0]["payload"]["decision"] == "needs_approval"
    assert trail[1]["payload"]["stage"] == "decide" and trail[1]["payload"]["reasons"] == reasons
    assert trail[1]["actor"]["org"] == FOR_PROFIT
    verify_exported_log(export, tmp_site.settings, tmp_site.root)


def test_an_answer_stored_without_its_obligations_is_refused_as_out_of_date(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher", sub="earlier-researcher")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        request_id = _approved(http, idp, researcher)
        # As an earlier version stored it: the answer without the digest of what it was computed under.
        kept_without(tmp_site.settings.state_url, request_id, COMPUTED_UNDER)
        reasons = _refused_as_out_of_date(http.get(f"/v1/queries/{request_id}", headers=researcher))
        assert reasons == [TERMS_CHANGED, "submit the query again"]
        # Asked again, the query is answered (approved once more) under the terms now in force.
        again = _approved(http, idp, researcher)
        assert _n(http.get(f"/v1/queries/{again}", headers=researcher)) > 0
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    verify_exported_log(export, tmp_site.settings, tmp_site.root)
