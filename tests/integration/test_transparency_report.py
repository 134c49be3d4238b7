"""`fedgate audit report` over a real gateway's export: a session with a release, a policy denial, a
disclosure refusal, an approval collected and a rejection, counted as such, and no one named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from gateway_site import Site, bearer, running_gateway
from oidc_issuer import LoopbackTestIssuer
from typer.testing import CliRunner

from audit.keys import load_log_key
from audit.notes import verifier_key_text
from gateway.cli import app

PURPOSE = {"duo": ["DUO:0000006"]}
ALICE = {"sub": "alice-report-researcher", "org": "org-aphp"}
BOB = {"sub": "bob-report-researcher", "org": "org-charite"}
STEWARD = {"sub": "dana-report-steward"}


def spec(kind: str, agreement: str, **extra: Any) -> dict[str, Any]:
    return {"dataset": "cohort", "agreement": agreement, "purpose": PURPOSE, "kind": kind, **extra}


def test_a_session_is_reported_by_outcome_and_names_no_one(
    tmp_site: Site, idp: LoopbackTestIssuer, tmp_path: Path
) -> None:
    alice, bob = bearer(idp, "researcher", **ALICE), bearer(idp, "researcher", **BOB)
    steward = bearer(idp, "steward", **STEWARD)
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/v1/queries", json=spec("count", "DSA-TEST-OPEN"), headers=alice).status_code == 200
        denied = http.post("/v1/queries", json=spec("count", "DSA-TEST-EXPIRED"), headers=bob)
        assert denied.status_code == 403 and "expired" in denied.text
        tiny = spec("count", "DSA-TEST-OPEN", filters={"column": "bmi", "op": ">", "value": 1000})
        small = http.post("/v1/queries", json=tiny, headers=alice)
        assert small.status_code == 403 and small.json()["title"] == "Refused by disclosure control", (
            small.text
        )
        waiting = []
        for _ in range(2):
            pending = http.post("/v1/queries", json=spec("summary", "DSA-TEST-APPROVAL",
                                                         params={"column": "bmi"}), headers=bob)  # fmt: skip
            assert pending.status_code == 202, pending.text
            waiting.append(pending.json()["request_id"])
        approved = http.post(f"/v1/steward/approvals/{waiting[0]}", headers=steward,
                             json={"approve": True, "reason": "ethics approval on file"})  # fmt: skip
        assert approved.status_code == 200 and approved.json()["status"] == "released", approved.text
        assert http.get(f"/v1/queries/{waiting[0]}", headers=bob).status_code == 200
        rejected = http.post(f"/v1/steward/approvals/{waiting[1]}", headers=steward,
                             json={"approve": False, "reason": "no ethics approval"})  # fmt: skip
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected", rejected.text
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).content
    path = tmp_path / "site.audit"
    path.write_bytes(export)
    vkey = verifier_key_text(
        tmp_site.settings.audit_origin, load_log_key(tmp_site.settings.log_key_file).public_key()
    )
    runner = CliRunner()
    as_json = runner.invoke(app, ["audit", "report", str(path), "--key", vkey, "--json"])
    human = runner.invoke(app, ["audit", "report", str(path), "--key", vkey], env={"COLUMNS": "250"})
    assert as_json.exit_code == 0 and human.exit_code == 0, as_json.output + human.output

    [part] = json.loads(as_json.stdout)["periods"]
    nonzero = {kind: {k: n for k, n in c.items() if n} for kind, c in part["queries"].items()}
    assert nonzero == {
        "count": {"received": 3, "released": 1, "denied_by_policy": 1, "refused_by_disclosure_control": 1},
        "summary": {"received": 2, "released": 1, "rejected": 1, "sent_to_steward": 2, "approved": 1},
    }
    assert part["agreements"]["DSA-TEST-OPEN"]["received"] == 2
    assert part["agreements"]["DSA-TEST-EXPIRED"]["denied_by_policy"] == 1
    assert part["agreements"]["DSA-TEST-APPROVAL"]["received"] == 2
    assert (part["organisations"], part["researchers"]) == (2, 2)
    assert "kind summary" in human.stdout
    for output in (as_json.stdout, human.stdout):
        for name in (*ALICE.values(), *BOB.values(), *STEWARD.values()):
            assert name not in output
        assert "sha256:" not in output
