"""A whole site for end-to-end tests: policies, keys, a pseudonymized store, and a gateway on loopback.

    site = build_site(tmp_path, issuer_url)      # folders, config, keys, ingested cohort
    with running_gateway(site.settings) as url:  # uvicorn on a free 127.0.0.1 port, in a thread
        httpx.post(f"{url}/v1/queries", ...)

The test agreements (added to a copy of the shipped policy data) cover the dataset `cohort`:
DSA-TEST-OPEN (every kind, min cell 10, 3 identical queries), DSA-TEST-APPROVAL (summaries need a
steward), DSA-TEST-EXPIRED (ended 2026-06-30) and DSA-TEST-DP (requires differential privacy).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import uvicorn

from audit.keys import generate_log_key
from connectors import ParquetConnector
from gateway.app import create_app
from gateway.settings import SiteSettings, load_settings
from gateway.synth import generate_site
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = "fedgate-site-de"
COLUMNS = ["age_band", "sex", "postcode_area", "country", "icd10", "hba1c", "bmi", "systolic_bp", "smoking",
           "outcome", "survival_days", "event", "admission_date"]  # fmt: skip
KINDS = ["count", "crosstab", "summary", "histogram", "quantiles", "glm", "kaplan_meier"]


# Test agreements stay in force two years from whenever the suite runs, so it never expires under itself.
IN_FORCE_UNTIL = (datetime.date.today() + datetime.timedelta(days=730)).isoformat()


def _agreement(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "title": "Test agreement",
        "parties": ["org-charite", "org-aphp"],
        "purposes": ["DUO:0000006"],
        "commercial_use": False,
        "collaboration": True,
        "return_of_results": True,
        "datasets": {"cohort": {"columns": COLUMNS}},
        "query_kinds": KINDS,
        "approval_kinds": [],
        "not_before": "2026-01-01",
        "not_after": IN_FORCE_UNTIL,
        "thresholds": {"min_cell_count": 10, "max_identical_queries": 3},
        "dp": None,
        "standard_contractual_clauses": [],
        "export_licences": [],
        # The ethics approvals the tests' purposes name: only a listed id satisfies DUO:0000021.
        "ethics_approvals": ["EC-1", "EC-2", "EC-3", "EC-4", "EC-5", "EC-2026-117"],
    }
    base.update(overrides)
    return base


TEST_AGREEMENTS = {
    "DSA-TEST-OPEN": _agreement(),
    "DSA-TEST-APPROVAL": _agreement(approval_kinds=["summary"]),
    "DSA-TEST-EXPIRED": _agreement(not_before="2025-01-01", not_after="2026-06-30"),
    "DSA-TEST-DP": _agreement(dp={"epsilon": 0.5, "budget": 5.0}),
    # Like DSA-TEST-OPEN, but released counts (and summary n) are rounded half up to multiples of 5.
    "DSA-TEST-ROUNDED": _agreement(
        thresholds={"min_cell_count": 10, "max_identical_queries": 3, "round_to": 5}
    ),
}


@dataclass(frozen=True)
class Site:
    root: Path
    config: Path
    settings: SiteSettings
    source: pa.Table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_site(
    tmp: Path,
    issuer_url: str,
    *,
    rows: int = 3000,
    store_url: str | None = None,
    site_id: str = "site-de",
    jurisdiction: str = "DE",
    seed: int = 3,
) -> Site:
    """Lay out a site folder, add the test agreements, create keys, and ingest a synthetic cohort."""
    root = tmp / site_id
    (root / "keys").mkdir(parents=True)
    shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*_test.rego"))
    agreements_file = root / "policies/data/agreements.json"
    agreements = json.loads(agreements_file.read_text())
    agreements.update(TEST_AGREEMENTS)
    agreements_file.write_text(json.dumps(agreements, indent=2))
    master = root / "keys/master.key"
    master.write_text(base64.b64encode(os.urandom(32)).decode())
    master.chmod(0o600)
    generate_log_key(root / "keys/log.key")
    store_url = store_url or "duckdb:///var/store.duckdb"
    config = root / "site.toml"
    config.write_text(
        f'site_id = "{site_id}"\njurisdiction = "{jurisdiction}"\nstore_url = "{store_url}"\n'
        'audit_url = "sqlite:///var/audit.db"\npolicy_dir = "policies"\n'
        'master_key_file = "keys/master.key"\nlog_key_file = "keys/log.key"\n'
        f'[oidc]\nissuer = "{issuer_url}"\naudience = "{AUDIENCE}"\n'
    )
    settings = load_settings(config)
    (root / "var").mkdir(exist_ok=True)
    table = generate_site(0, rows, seed)
    source = root / "patients.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, source)
    spec_path = ROOT / "examples/cohort.spec.yaml"
    with Store(settings.store_url) as store:
        key = SecretKey.from_file(master)
        spec = load_spec(spec_path)
        ingest(
            ParquetConnector(source),
            spec,
            str(spec_path),
            key,
            store,
            jurisdiction=jurisdiction,
            override_k=True,
        )
    return Site(root, config, settings, table)


@contextlib.contextmanager
def running_gateway(settings: SiteSettings, **app_options: Any) -> Iterator[str]:
    """Serve the site's app with uvicorn on a free loopback port; yield its base URL."""
    with serving(create_app(settings, **app_options)) as url:
        yield url


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, lifespan included; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def bearer(
    idp: Any, *roles: str, sub: str = "researcher-1", org: str = "org-aphp", country: str = "FR"
) -> dict[str, str]:
    """Authorization header of a fresh token from the test identity provider."""
    return {"Authorization": f"Bearer {idp.token(sub=sub, org=org, country=country, roles=list(roles))}"}


def consent_rule(settings: SiteSettings, entry: Any, spec: dict[str, Any]) -> Any:
    """The consent filter the site's policy sets for `spec` on `entry` (a CatalogEntry), asked as the
    pipeline asks it: what a test needs to compute the rows a query may see."""
    from gateway.auth import Principal
    from gateway.decision import PolicyDecisionPoint
    from gateway.pipeline import decision_input
    from gateway.query import parse_query_spec

    researcher = Principal(
        sub="x", org="org-aphp", country="FR", roles=frozenset({"researcher"}), visas=(), issuer="test"
    )
    decision = PolicyDecisionPoint(settings).decide(decision_input(researcher, parse_query_spec(spec), entry))
    assert decision.obligations is not None
    return decision.obligations.consent_filter


def audit_size(http: Any, idp: Any) -> int:
    """The size of the site's audit log, read through the auditor API (`http` an httpx.Client on the site)."""
    page = http.get("/v1/audit/entries", params={"start": 0, "end": 0}, headers=bearer(idp, "auditor"))
    return int(page.json()["size"])


def entries_since(http: Any, idp: Any, start: int) -> list[dict[str, Any]]:
    """The site's audit entries from `start` on (one page), parsed, read through the auditor API."""
    page = http.get("/v1/audit/entries", params={"start": start}, headers=bearer(idp, "auditor"))
    assert page.status_code == 200, page.text
    return [json.loads(base64.b64decode(e["entry"])) for e in page.json()["entries"]]


def logged_entries(settings: SiteSettings) -> list[dict[str, Any]]:
    """Every entry of the site's SQLite audit log, in order, read from its file as an auditor's copy would
    be (for a site no auditor token can reach, such as one that takes dev tokens only)."""
    import sqlite3

    from audit.storage import entries

    path = settings.audit_url.removeprefix("sqlite:///").split("?")[0]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(f"SELECT body FROM {entries.name} ORDER BY idx").fetchall()
    return [json.loads(body) for (body,) in rows]


def verify_exported_log(export: bytes, settings: SiteSettings, folder: Path) -> None:
    """Run `fedgate audit verify` on the site's audit log export, as an auditor would; assert it passes."""
    from typer.testing import CliRunner

    from audit.keys import load_log_key
    from audit.notes import verifier_key_text
    from gateway.cli import app

    path = folder / "site.audit"
    path.write_bytes(export)
    key = load_log_key(settings.log_key_file)
    vkey = verifier_key_text(settings.audit_origin, key.public_key())
    result = CliRunner().invoke(app, ["audit", "verify", str(path), "--key", vkey])
    assert result.exit_code == 0, result.output
    assert "each allowed by its decision" in result.stdout  # the second pass ran over the site's own entries
