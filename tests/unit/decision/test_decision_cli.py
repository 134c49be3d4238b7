"""`fedgate policy explain`: the decision, every reason and the obligations; bad input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.policy import app

POLICIES = Path(__file__).resolve().parents[3] / "policies"

REQUEST = {
    "requester": {"sub": "r-1", "org": "org-aphp", "country": "FR", "roles": ["researcher"]},
    "purpose": {"duo": ["DUO:0000006"]},
    "dsa": "DSA-2026-014",
    "dataset": {"id": "ds-diabetes-de", "jurisdiction": "DE", "duo": ["DUO:0000042"], "columns": ["sex"]},
    "query": {"kind": "count", "columns": ["sex"]},
    "destination": {"country": "FR"},
    "now": "2026-07-01T00:00:00Z",
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///store.duckdb"\n'
        f'audit_url = "sqlite:///audit.db"\npolicy_dir = "{POLICIES}"\n'
        f'master_key_env = "FEDGATE_TEST_UNUSED_KEY"\nlog_key_file = "log.key"\n'
    )
    return path


def _explain(config: Path, request: object, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    result = CliRunner().invoke(
        app, ["explain", "--config", str(config), "--input", str(request_file), *extra]
    )
    return result.exit_code, result.stdout, result.stderr


def test_explain_prints_decision_and_reasons(config: Path, tmp_path: Path) -> None:
    code, out, _ = _explain(config, REQUEST, tmp_path)
    assert code == 0
    assert "decision: deny" in out
    assert "  - DSA-2026-014 expired on 2026-06-30" in out
    assert "none (denied)" in out


def test_explain_prints_obligations_as_json(config: Path, tmp_path: Path) -> None:
    code, out, _ = _explain(config, {**REQUEST, "now": "2026-05-01T10:00:00Z"}, tmp_path, "--json")
    assert code == 0
    decision = json.loads(out)
    assert decision["decision"] == "allow"
    assert decision["obligations"]["min_cell_count"] == 20
    assert decision["obligations"]["consent_filter"]["consent_column"] == "consent_duo"


def test_explain_names_the_bad_input_field(config: Path, tmp_path: Path) -> None:
    code, _, err = _explain(config, {**REQUEST, "destination": {"country": "Narnia"}}, tmp_path)
    assert code == 2
    assert "destination.country" in err


def test_explain_reports_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text('site_id = "site-de"\n')
    code, _, err = _explain(bad, REQUEST, tmp_path)
    assert code == 2
    assert "site.toml" in err
