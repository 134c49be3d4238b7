"""The steward's activity summary of queries that needed a steward: approved, an answer counts as released
when a collect lets it leave the site, and a refused collect counts as refused at its stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gateway_site import Site, bearer, running_gateway, verify_exported_log
from oidc_issuer import LoopbackTestIssuer

from gateway.state import GatewayState, outcomes

APPROVAL = "DSA-TEST-APPROVAL"
SUMMARY = {
    "dataset": "cohort", "agreement": APPROVAL, "purpose": {"duo": ["DUO:0000006"]}, "kind": "summary",
    "group_by": ["sex"], "params": {"column": "bmi"},
}  # fmt: skip
ELSEWHERE = "org-elsewhere"  # no party to the agreement: policy denies its researchers


def _approved(http: httpx.Client, idp: LoopbackTestIssuer, researcher: dict[str, str]) -> str:
    pending = http.post("/v1/queries", json=SUMMARY, headers=researcher)
    assert pending.status_code == 202, pending.text
    request_id = str(pending.json()["request_id"])
    assert _summary(http, idp)[0] == {"pending_approval": 1}
    approved = http.post(
        f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "ethics approval on file"},
        headers=bearer(idp, "steward", sub="steward-summary"),
    )  # fmt: skip
    assert approved.status_code == 200 and approved.json()["status"] == "released", approved.text
    return request_id


def _summary(http: httpx.Client, idp: LoopbackTestIssuer) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The agreement's requests by outcome, and the researchers refused most."""
    activity = http.get("/v1/steward/activity", headers=bearer(idp, "steward", sub="steward-summary"))
    assert activity.status_code == 200, activity.text
    body = activity.json()
    groups = {g["outcome"]: g["requests"] for g in body["by_agreement"] if g["agreement"] == APPROVAL}
    return groups, body["most_refused"]


def _stage(site: Site, request_id: str) -> Any:
    engine = sa.create_engine(site.settings.state_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(outcomes.c.stage).where(outcomes.c.request_id == request_id)
            ).scalar_one()
    finally:
        engine.dispose()


def test_an_answer_whose_every_collect_is_refused_counts_as_refused_not_released(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher", sub="moved-researcher")
    moved = bearer(idp, "researcher", sub="moved-researcher", org=ELSEWHERE)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        request_id = _approved(http, idp, researcher)
        # Approved, the answer waits at the site: nothing has left yet.
        assert _summary(http, idp) == ({"approved": 1}, [])
        for _ in range(3):
            assert http.get(f"/v1/queries/{request_id}", headers=moved).status_code == 403
        groups, most_refused = _summary(http, idp)
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    assert groups == {"refused": 1}
    assert most_refused == [{"subject": "moved-researcher", "org": ELSEWHERE, "refused": 1}]
    assert _stage(tmp_site, request_id) == "decide"
    verify_exported_log(export, tmp_site.settings, tmp_site.root)


def test_a_collected_answer_counts_as_released_whatever_a_later_collect_meets(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher", sub="collecting-researcher")
    moved = bearer(idp, "researcher", sub="collecting-researcher", org=ELSEWHERE)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        request_id = _approved(http, idp, researcher)
        refused_first = http.get(f"/v1/queries/{request_id}", headers=moved)
        assert refused_first.status_code == 403
        assert _summary(http, idp)[0] == {"refused": 1}
        collected = http.get(f"/v1/queries/{request_id}", headers=researcher)
        assert collected.status_code == 200, collected.text
        assert _summary(http, idp) == ({"released": 1}, [])
        # The answer has left: a collect refused afterwards does not hide that it did.
        assert http.get(f"/v1/queries/{request_id}", headers=moved).status_code == 403
        activity = http.get("/v1/steward/activity", headers=bearer(idp, "steward")).json()
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    released = [g for g in activity["by_agreement"] if g["agreement"] == APPROVAL]
    assert [(g["outcome"], g["requests"]) for g in released] == [("released", 1)]
    assert released[0]["suppressed_cells"] == collected.json()["disclosure"]["suppressed"]
    assert activity["most_refused"] == []
    assert _stage(tmp_site, request_id) is None
    verify_exported_log(export, tmp_site.settings, tmp_site.root)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_refused_collect_leaves_a_stored_or_waiting_release_standing(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    state = GatewayState(url)
    try:

        def ended(request_id: str, outcome: Any, **details: Any) -> None:
            state.record_outcome(
                request_id, subject="r", org="org-a", agreement=APPROVAL, dataset="cohort", kind="summary",
                outcome=outcome, **details,
            )  # fmt: skip

        collect_refused = {"stage": "decide", "replace_release": False}
        ended("stored", "released", cells=2, suppressed=0)
        state.flush_outcomes()
        ended("stored", "refused", **collect_refused)  # the release is on disk already
        ended("waiting", "released", cells=2, suppressed=0)
        ended("waiting", "refused", **collect_refused)  # the release waits in the same batch
        ended("never", "approved", cells=2, suppressed=0)
        ended("never", "refused", **collect_refused)  # no answer left: the refusal counts
        ended("failed", "released", cells=2, suppressed=0)
        ended("failed", "refused", stage="execute")  # a submit's failed commit: its refusal replaces it
        groups = {g["outcome"]: g["requests"] for g in state.activity("2000-01-01T00:00:00Z")["by_agreement"]}
    finally:
        state.close()
    assert groups == {"released": 2, "refused": 2}
