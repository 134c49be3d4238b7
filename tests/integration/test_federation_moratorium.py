"""A federated answer is under the latest publication moratorium (DUO:0000024) of the sites it counts, and
says so beside its rows and per site, as a site's own answer says so in its policy block, and as the
OpenAPI page documents."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
from federation_sites import build_federation, running_federation
from gateway_site import ROOT, bearer
from oidc_issuer import LoopbackTestIssuer
from test_openapi import documented_schema, violations

from connectors import ParquetConnector
from gateway.client import result_frame
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

TODAY = dt.datetime.now(dt.UTC).date()
UNTIL = {"site-de": TODAY + dt.timedelta(days=30), "site-fr": TODAY + dt.timedelta(days=40)}
QUERY = {
    "dataset": "cohort",
    "agreement": "DSA-TEST-OPEN",
    "purpose": {"duo": ["DUO:0000006"]},
    "kind": "count",
}


def test_a_federated_answer_is_under_the_latest_moratorium_of_its_sites(
    tmp_path: Path, idp: LoopbackTestIssuer
) -> None:
    federation = build_federation(tmp_path, idp.issuer_url, list(UNTIL), rows=2000)
    example = (ROOT / "examples/cohort.spec.yaml").read_text()
    for site_id, site in federation.sites.items():
        consent = f"duo: [DUO:0000042, DUO:0000024]\nmoratorium_until: {UNTIL[site_id]}"
        spec_path = site.root / "moratorium.spec.yaml"
        spec_path.write_text(re.sub(r"^duo: .*$", consent, example, count=1, flags=re.M))
        assert site.settings.master_key_file is not None
        with Store(site.settings.store_url) as store:
            ingest(
                ParquetConnector(site.root / "patients.parquet"), load_spec(spec_path), str(spec_path),
                SecretKey.from_file(site.settings.master_key_file), store,
                jurisdiction=site.settings.jurisdiction, override_k=True,
            )  # fmt: skip
    with running_federation(federation) as urls:
        answer = httpx.post(
            f"{urls['site-de']}/v1/federated-queries",
            json=QUERY,
            headers=bearer(idp, "researcher"),
            timeout=60,
        )
        openapi = httpx.get(f"{urls['site-de']}/openapi.json").json()
    assert answer.status_code == 200, answer.text
    # The answer fits the schema the gateway serves for it, moratoria included.
    schema = documented_schema(openapi, "/v1/federated-queries", "post", "200")
    assert violations(answer.json(), schema, openapi["components"]["schemas"]) == []
    body = answer.json()
    assert body["covered"] == ["site-de", "site-fr"]
    assert body["publication_moratorium_until"] == UNTIL["site-fr"].isoformat()
    per_site = {s["site"]: s.get("publication_moratorium_until") for s in body["sites"]}
    assert per_site == {site: until.isoformat() for site, until in UNTIL.items()}
    assert result_frame(body).attrs == {"publication_moratorium_until": UNTIL["site-fr"].isoformat()}
