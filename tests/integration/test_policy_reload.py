"""`fedgate policy reload`: a running gateway does not watch its policy folder; a hand edit takes effect when
the folder is reloaded, once the audit log records the bundle it puts in force, and an invalid edit is
named and kept out while the gateway decides with its last good bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from gateway_site import Site, bearer, logged_entries, running_gateway, verify_exported_log
from oidc_issuer import LoopbackTestIssuer
from typer.testing import CliRunner

from gateway.cli import app
from gateway.decision import load_bundle

BASE = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}}


def _query(http: httpx.Client, idp: LoopbackTestIssuer, group_by: str) -> httpx.Response:
    # Each query groups by another column: the agreement's identical-query limit never counts them.
    spec = {**BASE, "kind": "count", "group_by": [group_by]}
    return http.post("/v1/queries", json=spec, headers=bearer(idp, "researcher"))


def _edit_agreement(site: Site, **terms: Any) -> None:
    path = site.settings.policy_dir / "data/agreements.json"
    agreements = json.loads(path.read_text())
    agreements["DSA-TEST-OPEN"].update(terms)
    path.write_text(json.dumps(agreements, indent=2))


def _reload(site: Site, option: str = "--config") -> Any:
    return CliRunner().invoke(app, ["policy", "reload", option, str(site.config)])


def _indexed(site: Site, event_type: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, e) for i, e in enumerate(logged_entries(site.settings)) if e["type"] == event_type]


def test_a_hand_edit_takes_effect_on_reload_once_on_record(
    tmp_site: Site, idp: LoopbackTestIssuer, tmp_path: Path
) -> None:
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        started = http.get("/healthz").json()["policy_bundle"]
        assert _query(http, idp, "sex").status_code == 200
        _edit_agreement(tmp_site, suspended=True)
        # The gateway does not watch the folder: until the reload it decides under the terms it loaded.
        still = _query(http, idp, "age_band")
        assert still.status_code == 200, still.text
        assert http.get("/healthz").json()["policy_bundle"] == started

        result = _reload(tmp_site)
        assert result.exit_code == 0, result.output
        edited = load_bundle(tmp_site.settings.policy_dir, tmp_site.settings.jurisdiction).digest
        assert f"sha256:{edited}" in result.output and f"sha256:{started}" in result.output

        denied = _query(http, idp, "smoking")
        assert denied.status_code == 403 and "suspended" in denied.json()["detail"], denied.text
        assert http.get("/healthz").json()["policy_bundle"] == edited

        # Reloading a folder already on record records nothing more.
        again = _reload(tmp_site, "-c")
        assert again.exit_code == 0, again.output
        assert "already on record" in again.output
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor"))

    *_, (at, change) = _indexed(tmp_site, "policy.changed")
    assert change["payload"] == {
        "bundle_digest": f"sha256:{edited}", "previous_digest": f"sha256:{started}", "change": "cli_reload",
    }  # fmt: skip
    assert change["actor"]["sub"].startswith("local:")
    assert [c["payload"]["change"] for _, c in _indexed(tmp_site, "policy.changed")] == [
        "found_at_startup", "cli_reload",
    ]  # fmt: skip
    # The bundle was on record before any decision made with it.
    decided = [(i, e["payload"]) for i, e in _indexed(tmp_site, "query.decided")]
    under_edit = [i for i, p in decided if p["policy_bundle"] == f"sha256:{edited}"]
    assert under_edit and min(under_edit) > at
    assert [p["decision"] for i, p in decided if i > at] == ["deny"]
    assert export.status_code == 200
    verify_exported_log(export.content, tmp_site.settings, tmp_path)
    # A later start finds the log in step with the folder: nothing is recorded at startup.
    with running_gateway(tmp_site.settings):
        pass
    assert len(_indexed(tmp_site, "policy.changed")) == 2


def test_an_invalid_hand_edit_is_named_and_the_gateway_keeps_its_bundle(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        started = http.get("/healthz").json()["policy_bundle"]
        before = len(logged_entries(tmp_site.settings))
        _edit_agreement(tmp_site, suspended=True, thresholds={"min_cell_count": "5"})

        result = _reload(tmp_site)
        assert result.exit_code == 2, result.output
        assert "agreements.json" in result.output
        assert "DSA-TEST-OPEN.thresholds.min_cell_count" in result.output
        assert len(logged_entries(tmp_site.settings)) == before  # nothing recorded

        answered = _query(http, idp, "sex")
        assert answered.status_code == 200, answered.text
        assert http.get("/healthz").json()["policy_bundle"] == started
    assert len(_indexed(tmp_site, "policy.changed")) == 1


def test_the_documented_agreement_template_requires_no_noise_and_names_the_reload() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    section = doc.split("## Writing a new agreement", 1)[1].split("\n## ", 1)[0]
    template = json.loads("{" + section.split("```json\n", 1)[1].split("```", 1)[0] + "}")
    # A dp block would make the policy require differential privacy, which this gateway refuses.
    assert template["DSA-2026-031"]["dp"] is None
    assert "fedgate policy reload --config site.toml" in section and "cli_reload" in section
    help_text = CliRunner().invoke(app, ["policy", "reload", "--help"])
    assert help_text.exit_code == 0 and "cli_reload" in help_text.output
