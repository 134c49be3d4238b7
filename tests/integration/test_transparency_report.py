"""`fedgate audit report` over a real gateway's export: a session with a release, a policy denial, a
disclosure refusal, an approval collected, a rejection and requests refused before they were read (at the
coordinator too), counted as such; no one named, and no count small enough to single anyone out."""

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
from audit.report import (
    OUTCOMES,
    UNKNOWN_AGREEMENTS,
    _count,
    _Tally,
    merged_agreements,
    transparency_report,
)
from audit.verify.reader import ExportReader
from gateway.cli import app

PURPOSE = {"duo": ["DUO:0000006"]}
ALICE = {"sub": "alice-report-researcher", "org": "org-aphp"}
BOB = {"sub": "bob-report-researcher", "org": "org-charite"}
STEWARD = {"sub": "dana-report-steward"}


def spec(kind: str, agreement: str, **extra: Any) -> dict[str, Any]:
    return {"dataset": "cohort", "agreement": agreement, "purpose": PURPOSE, "kind": kind, **extra}


def exact_periods(path: Path, vkey: str) -> list[dict[str, Any]]:
    """Every count of the export as it is (a `min_count` of 1, which no report takes)."""
    made = transparency_report(path, vkey)
    tally = _Tally()
    with path.open("rb") as stream:
        _count(ExportReader(stream), tally, made.checkpoint_size, made.root)
    return tally.periods("quarter", None, None, 1)


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
        # Refused before they were read: by the federated coordinator, by validation, by the poll endpoint
        too_slow = {**spec("count", "DSA-TEST-OPEN"), "timeout_s": 100000}
        slow = http.post("/v1/federated-queries", json=too_slow, headers=alice)
        assert slow.status_code == 422 and slow.json()["title"] == "Invalid federated query", slow.text
        nowhere = spec("count", "DSA-TEST-OPEN", sites=["nowhere"])
        assert http.post("/v1/federated-queries", json=nowhere, headers=bob).json()["title"] == "Unknown site"
        malformed = {**spec("count", "DSA-TEST-OPEN"), "kind": 3}
        assert http.post("/v1/queries", json=malformed, headers=alice).status_code == 422
        assert http.get("/v1/queries/req-0000000000000000", headers=bob).status_code == 404
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

    [counted] = exact_periods(path, vkey)
    nonzero = {
        dsa: {kind: {k: n for k, n in c.items() if n} for kind, c in kinds.items()}
        for dsa, kinds in counted["queries"].items()
    }
    assert nonzero == {
        "DSA-TEST-APPROVAL": {"summary": {"released": 1, "rejected": 1}},
        # Only denied, an agreement no decision allowed is not named (a researcher may type any name).
        UNKNOWN_AGREEMENTS: {"count": {"denied_by_policy": 1}},
        "DSA-TEST-OPEN": {"count": {"released": 1, "refused_by_disclosure_control": 1}},
    }
    assert (counted["invalid_queries"], counted["invalid_federated_queries"]) == (2, 2)
    assert (counted["organisations"], counted["researchers"]) == (2, 2)

    # Published: each agreement had one researcher, so none is named, and every count is below 5
    [part] = json.loads(as_json.stdout)["periods"]
    merged = merged_agreements(5)
    assert list(part["queries"]) == [UNKNOWN_AGREEMENTS, merged]
    assert part["queries"][merged] == {
        "count": {**dict.fromkeys(OUTCOMES, 0), "released": None, "refused_by_disclosure_control": None},
        "summary": {**dict.fromkeys(OUTCOMES, 0), "released": None, "rejected": None},
    }  # fmt: skip
    assert part["queries"][UNKNOWN_AGREEMENTS] == {
        "count": {**dict.fromkeys(OUTCOMES, 0), "denied_by_policy": None}
    }
    assert (part["invalid_queries"], part["invalid_federated_queries"]) == (None, None)
    assert (part["organisations"], part["researchers"]) == (None, None)
    assert "kind summary" in human.stdout and "<5" in human.stdout
    lower = runner.invoke(app, ["audit", "report", str(path), "--key", vkey, "--json", "--min-count", "2"])
    [part] = json.loads(lower.stdout)["periods"]
    assert (part["invalid_queries"], part["invalid_federated_queries"], part["researchers"]) == (2, 2, 2)
    for output in (as_json.stdout, human.stdout, lower.stdout):
        for name in (*ALICE.values(), *BOB.values(), *STEWARD.values()):
            assert name not in output
        assert "sha256:" not in output and "DSA-TEST" not in output
