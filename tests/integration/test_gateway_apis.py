"""Steward and auditor APIs, the Python client, the PostgreSQL store, dev tokens, and clean logs."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import httpx
import pytest
from gateway_site import Site, bearer, build_site, logged_entries, running_gateway
from oidc_issuer import LoopbackTestIssuer

from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from gateway.client import ApprovalPending, Gateway, QueryDenied, QueryInvalid

PURPOSE = "DUO:0000006"
COUNT = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": [PURPOSE]}, "kind": "count"}
DEV_TOKEN = ["--sub", "dev", "--org", "org-aphp", "--country", "FR", "--role", "researcher"]


def test_steward_reads_catalog_and_replaces_policy_data(tmp_site: Site, idp: LoopbackTestIssuer) -> None:
    steward = bearer(idp, "steward", sub="steward-1")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        (dataset,) = http.get("/v1/steward/datasets", headers=steward).json()
        assert dataset["dataset"] == "cohort" and dataset["risk_report"]["k_threshold"] == 5
        assert "master" not in json.dumps(dataset) or dataset["key_id"].startswith("fp:")
        listing = http.get("/v1/steward/policy-data", headers=steward).json()
        assert "agreements" in listing["documents"]
        agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()

        bad = json.loads(json.dumps(agreements))
        bad["DSA-TEST-OPEN"]["not_after"] = "2025-13-40"
        refused = http.put("/v1/steward/policy-data/agreements", json=bad, headers=steward)
        assert refused.status_code == 422
        assert "DSA-TEST-OPEN.not_after" in refused.json()["detail"]
        assert (
            http.get("/healthz").json()["policy_bundle"] == listing["bundle_digest"]
        )  # last good bundle stays

        agreements["DSA-TEST-OPEN"]["suspended"] = True
        changed = http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward)
        assert changed.status_code == 200 and changed.json()["previous_digest"] == listing["bundle_digest"]
        body = {
            "dataset": "cohort",
            "agreement": "DSA-TEST-OPEN",
            "purpose": {"duo": [PURPOSE]},
            "kind": "count",
        }
        denied = http.post("/v1/queries", json=body, headers=bearer(idp, "researcher"))
        assert denied.status_code == 403 and "suspended" in denied.json()["detail"]
        activity = http.get("/v1/steward/activity", headers=steward).json()
        assert any(r["outcome"] == "refused" for r in activity["by_agreement"])
        assert http.get("/v1/steward/policy-data/../../etc", headers=steward).status_code == 404
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    assert b'"policy.changed"' in export and changed.json()["bundle_digest"].encode() in export


def test_auditor_gets_entries_and_proofs_that_verify(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    http.post("/v1/queries", headers=bearer(idp, "researcher"), json=COUNT)
    auditor = bearer(idp, "auditor")
    page = http.get("/v1/audit/entries", params={"start": 0}, headers=auditor).json()
    size = page["size"]
    assert size >= 4 and len(page["entries"]) == size
    entry = page["entries"][2]
    proof = http.get("/v1/audit/proofs/inclusion", params={"index": 2, "size": size}, headers=auditor).json()
    root = base64.b64decode(proof["root"])
    verify_inclusion(
        2,
        size,
        leaf_hash(base64.b64decode(entry["entry"])),
        [base64.b64decode(p) for p in proof["proof"]],
        root,
    )
    old = http.get("/v1/audit/proofs/inclusion", params={"index": 0, "size": 2}, headers=auditor).json()
    cons = http.get("/v1/audit/proofs/consistency", params={"old": 2, "new": size}, headers=auditor).json()
    verify_consistency(
        2, size, [base64.b64decode(p) for p in cons["proof"]], base64.b64decode(old["root"]), root
    )
    bad = http.get("/v1/audit/proofs/inclusion", params={"index": size + 5, "size": size}, headers=auditor)
    assert bad.status_code == 422 and bad.json()["field"] == "index"
    # Each refusal names the parameter at fault, and is audited (the log grows by one entry each).
    refusals = [
        ("/v1/audit/entries", {"start": 0, "end": size + 10**6}, "end"),
        ("/v1/audit/entries", {"start": -1}, "start"),
        ("/v1/audit/proofs/inclusion", {"index": 0, "size": 10**9}, "size"),
        ("/v1/audit/proofs/consistency", {"old": 0, "new": 10**9}, "new"),
        ("/v1/audit/proofs/consistency", {"old": 3, "new": 2}, "old"),
    ]
    for path, params, field in refusals:
        refused = http.get(path, params=params, headers=auditor)
        assert refused.status_code == 422 and refused.json()["field"] == field, (path, params, refused.text)
    note = http.get("/v1/audit/checkpoint", headers=auditor).text
    assert note.startswith("fedgate.example/site-de\n")


def test_entries_without_an_end_are_a_page_however_long_the_log(
    http: httpx.Client, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.routes.audit.MAX_ENTRIES", 3)  # a log longer than a page, in a few entries
    http.post("/v1/queries", headers=bearer(idp, "researcher"), json=COUNT)
    auditor = bearer(idp, "auditor")
    first = http.get("/v1/audit/entries", headers=auditor)
    assert first.status_code == 200, first.text
    assert first.json()["size"] > 3 and [e["index"] for e in first.json()["entries"]] == [0, 1, 2]
    later = http.get("/v1/audit/entries", params={"start": 2}, headers=auditor).json()
    assert [e["index"] for e in later["entries"]] == [2, 3, 4]


def test_python_client(gateway_url: str, idp: LoopbackTestIssuer) -> None:
    token = idp.token(sub="client-user", org="org-aphp", country="FR", roles=["researcher"])
    with Gateway(gateway_url, token) as site:
        table = site.crosstab("cohort", "DSA-TEST-OPEN", PURPOSE, group_by=["sex", "smoking"])
        assert {"sex", "smoking", "count", "suppressed"} <= set(table.columns)
        assert table["count"].notna().all() and not table["suppressed"].any()
        summary = site.summary("cohort", "DSA-TEST-OPEN", PURPOSE, column="bmi", group_by=["sex"])
        assert set(summary["sex"]) == {"F", "M"} and (summary["mean"] > 15).all()
        # One dtype per result column, whatever the values (docs/queries.md); group columns keep theirs.
        by_sex = site.crosstab("cohort", "DSA-TEST-OPEN", PURPOSE, group_by="sex")
        assert by_sex.dtypes.astype(str).to_dict() == {
            "sex": "object", "count": "Int64", "suppressed": "boolean", "suppression_reason": "string",
            "margin": "string",
        }  # fmt: skip
        assert summary.dtypes.astype(str).to_dict() == {
            "sex": "object", "n": "Int64", "mean": "Float64", "variance": "Float64", "sum": "Float64",
            "sum_sq": "Float64", "suppressed": "boolean", "suppression_reason": "string",
        }  # fmt: skip
        histogram = site.histogram("cohort", "DSA-TEST-OPEN", PURPOSE, column="bmi", edges=[20, 30])
        assert histogram.dtypes.astype(str).to_dict() == {
            "bin": "Int64", "lower": "Float64", "upper": "Float64", "count": "Int64", "suppressed": "boolean",
            "suppression_reason": "string", "margin": "string",
        }  # fmt: skip
        with pytest.raises(QueryDenied) as denied:
            site.count("cohort", "DSA-TEST-EXPIRED", PURPOSE)
        assert "DSA-TEST-EXPIRED expired on 2026-06-30" in denied.value.reasons
        with pytest.raises(QueryInvalid) as invalid:
            site.histogram("cohort", "DSA-TEST-OPEN", PURPOSE, column="bmi", edges=[30, 20])
        assert "edges" in (invalid.value.field or "")
        # A validation problem lists its faults in `errors`, not `reasons`: the client makes them reasons.
        assert len(invalid.value.reasons) == len(invalid.value.problem["errors"]) > 0
        assert invalid.value.reasons[0].startswith("params.edges: edges must increase")
        with pytest.raises(ApprovalPending) as pending:
            site.summary("cohort", "DSA-TEST-APPROVAL", PURPOSE, column="hba1c")
        assert site.result(pending.value.request_id)["status"] == "pending_approval"


@pytest.mark.postgres
def test_postgresql_store(tmp_path: Path, idp: LoopbackTestIssuer, pg_url: str) -> None:
    site = build_site(tmp_path, idp.issuer_url, store_url=pg_url)
    body = {
        **COUNT,
        "kind": "crosstab",
        "group_by": ["sex"],
        "filters": {"column": "bmi", "op": ">", "value": 25},
    }
    with running_gateway(site.settings) as url, httpx.Client(base_url=url) as http:
        response = http.post("/v1/queries", json=body, headers=bearer(idp, "researcher"))
        median = {**body, "kind": "quantiles", "group_by": [], "params": {"column": "bmi", "probs": [0.5]}}
        quant = http.post("/v1/queries", headers=bearer(idp, "researcher"), json=median)
    assert response.status_code == 200, response.text
    cells = [r for r in response.json()["rows"] if r["margin"] is None]
    assert {r["sex"] for r in cells} == {"F", "M"} and all(r["count"] >= 10 for r in cells)
    assert quant.status_code == 200 and quant.json()["rows"][0]["q0.5"] > 25


def test_dev_tokens_work_only_in_dev_mode_on_loopback(tmp_site: Site, idp: LoopbackTestIssuer) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.settings import load_settings

    config = tmp_site.config
    refused = CliRunner().invoke(app, ["dev-token", "--config", str(config), *DEV_TOKEN])
    assert refused.exit_code == 2
    config.write_text("dev_mode = true\n" + config.read_text())
    issued = CliRunner().invoke(app, ["dev-token", "--config", str(config), *DEV_TOKEN])
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[-1]
    with running_gateway(load_settings(config)) as url:
        response = httpx.post(f"{url}/v1/queries", json=COUNT, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    # The audit log tells a dev token's identity from the identity provider's user of the same names.
    actors = {json.dumps(e.get("actor")) for e in logged_entries(load_settings(config))}
    assert json.dumps({"org": "dev-token:org-aphp", "sub": "dev"}) in actors
    assert json.dumps({"org": "org-aphp", "sub": "dev"}) not in actors


def test_a_dev_token_is_refused_on_a_request_that_came_over_another_address(tmp_site: Site) -> None:
    import asyncio

    from typer.testing import CliRunner

    from gateway.app import create_app
    from gateway.cli import app
    from gateway.settings import load_settings

    config = tmp_site.config
    config.write_text("dev_mode = true\n" + config.read_text())
    token = CliRunner().invoke(app, ["dev-token", "--config", str(config), *DEV_TOKEN]).stdout.split()[-1]
    gateway = create_app(load_settings(config))

    async def ask(address: str) -> httpx.Response:
        # Served by other means than `fedgate serve` (an ASGI server told to bind elsewhere): the address
        # the request came over is the socket's, which the ASGI scope gives as `server`.
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{address}:8080") as http:
            return await http.post("/v1/queries", json=COUNT, headers={"Authorization": f"Bearer {token}"})

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with gateway.router.lifespan_context(gateway):
            return await ask("203.0.113.7"), await ask("127.0.0.1")

    outside, loopback = asyncio.run(both())
    assert outside.status_code == 401
    assert outside.json()["reasons"] == ["a dev token is accepted only on a loopback address"]
    assert loopback.status_code == 200, loopback.text
    refused = [e for e in logged_entries(load_settings(config)) if e["type"] == "auth.failed"]
    assert [e["payload"]["reason"] for e in refused] == ["auth.failed"]


def test_no_token_or_identifier_reaches_the_logs(
    tmp_site: Site, idp: LoopbackTestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = idp.token(sub="log-user", org="org-aphp", country="FR", roles=["researcher"])
    mrns = tmp_site.source["patient_id"].to_pylist()[:5]
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        body = {
            "dataset": "cohort",
            "agreement": "DSA-TEST-OPEN",
            "purpose": {"duo": [PURPOSE]},
            "kind": "count",
        }
        http.post("/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"})
        http.post("/v1/queries", json=body, headers={"Authorization": f"Bearer {token}x"})
        http.post("/v1/steward/datasets/cohort/withdrawals", json={"patients": mrns},
                  headers=bearer(idp, "steward"))  # fmt: skip
    logged = caplog.text
    assert token not in logged and token[:40] not in logged
    for mrn in mrns:
        assert mrn not in logged


@pytest.mark.parametrize("problem", ["missing", "short"])
def test_gateway_refuses_to_start_without_a_usable_master_key(tmp_site: Site, problem: str) -> None:
    from gateway.runtime import SiteRuntime, StartupError

    key = tmp_site.settings.master_key_file
    assert key is not None
    if problem == "missing":
        key.unlink()
    else:
        key.write_text(base64.b64encode(b"0" * 16).decode())
    with pytest.raises(StartupError, match=r"master\.key") as err:
        SiteRuntime.start(tmp_site.settings)
    assert "MDAw" not in str(err.value)


def test_a_body_refused_by_validation_is_audited_with_its_actor(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url) as http:
        bad = {**COUNT, "kind": "scatterplot"}
        response = http.post("/v1/queries", json=bad, headers=bearer(idp, "researcher", sub="validator"))
        assert response.status_code == 422
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    refused = [line for line in export.split(b"\n") if b'"query.refused"' in line and b'"validate"' in line]
    assert refused and b'"validator"' in refused[-1] and b"kind" in refused[-1]


def test_a_steward_cannot_approve_their_own_query(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    both = bearer(idp, "researcher", "steward", sub="dual-role")
    body = {**COUNT, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "bmi"}}
    pending = http.post("/v1/queries", json=body, headers=both)
    assert pending.status_code == 202
    request_id = pending.json()["request_id"]
    own = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": True, "reason": "ok"},
                    headers=both)  # fmt: skip
    assert own.status_code == 403 and "their own query" in own.json()["detail"]
    other = http.post(f"/v1/steward/approvals/{request_id}", json={"approve": False, "reason": "no"},
                      headers=bearer(idp, "steward", sub="another-steward"))  # fmt: skip
    assert other.status_code == 200 and other.json()["status"] == "rejected"


def test_a_missing_or_unrecordable_approval_reason_is_a_422_and_the_request_stays_pending(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher", sub="reason-researcher")
    body = {**COUNT, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "hba1c"}}
    request_id = http.post("/v1/queries", json=body, headers=researcher).json()["request_id"]
    steward = bearer(idp, "steward", sub="reason-steward")
    bad = http.post(f"/v1/steward/approvals/{request_id}", headers=steward,
                    json={"approve": True, "reason": "asked jane.doe@hospital.example"})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["field"] == "reason" and "jane.doe" not in bad.text
    assert http.get(f"/v1/queries/{request_id}", headers=researcher).json()["status"] == "pending_approval"
    for missing in ({"approve": True}, {"approve": True, "reason": "   "}):
        unexplained = http.post(f"/v1/steward/approvals/{request_id}", headers=steward, json=missing)
        assert unexplained.status_code == 422 and unexplained.json()["field"] == "reason"
    assert http.get(f"/v1/queries/{request_id}", headers=researcher).json()["status"] == "pending_approval"
    good = http.post(f"/v1/steward/approvals/{request_id}", headers=steward,
                     json={"approve": True, "reason": "ethics committee approval on file"})  # fmt: skip
    assert good.status_code == 200 and good.json()["status"] == "released"
