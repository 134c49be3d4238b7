"""A federated GLM is under the publication moratoria (DUO:0000024) of the sites it fits over, as a
federated query is: over real HTTP, a site whose dataset's consent sets one says until when as it opens its
session, its row of the fit carries that day, and the fit carries the latest day of its sites."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from federation_sites import Federation, build_federation, running_federation
from oidc_issuer import LoopbackTestIssuer
from test_glm_fidelity import GAUSSIAN, SITES, SPEC, add_gbsg2, gbsg2, glm_body, researcher, thirds
from test_openapi import documented_schema, violations

from connectors import ParquetConnector
from gateway.client_federation import Federation as FederationClient
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import ConsentTerms, Store

TODAY = dt.datetime.now(dt.UTC).date()
# Site A's consent sets none; site B's moratorium ends after site C's.
UNTIL = {"site-b": TODAY + dt.timedelta(days=40), "site-c": TODAY + dt.timedelta(days=30)}
MORATORIUM = "publication_moratorium_until"


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("glm-moratorium")
    fed = build_federation(tmp, idp.issuer_url, SITES, rows=300)
    add_gbsg2(fed, tmp, thirds(gbsg2()))
    for site_id, until in UNTIL.items():
        _under_moratorium(fed, tmp, site_id, until)
    with running_federation(fed) as running:
        yield running


def _under_moratorium(fed: Federation, tmp: Path, site_id: str, until: dt.date) -> None:
    """The site's third again, as a new version whose consent sets a publication moratorium."""
    consent = f"duo: [DUO:0000042, DUO:0000024]\nmoratorium_until: {until}"
    spec_path = tmp / f"gbsg2-{site_id}.spec.yaml"
    spec_path.write_text(re.sub(r"^duo: .*$", consent, SPEC, count=1, flags=re.M))
    site = fed.sites[site_id]
    with Store(site.settings.store_url) as store:
        published = ingest(
            ParquetConnector(site.root / "gbsg2.parquet"), load_spec(spec_path), str(spec_path),
            SecretKey.from_file(site.root / "keys/master.key"), store,
            jurisdiction=site.settings.jurisdiction, override_k=True,
        ).entry  # fmt: skip
    assert published.version == 2 and published.consent_terms == ConsentTerms(moratorium_until=until)


def _schema_violations(url: str, path: str, status: str, body: dict[str, Any]) -> list[str]:
    """Where `body` breaks the schema the gateway's served OpenAPI page documents for it."""
    openapi = httpx.get(f"{url}/openapi.json").json()
    components = openapi["components"]["schemas"]
    return violations(body, documented_schema(openapi, path, "post", status), components)


def test_a_session_under_a_moratorium_says_until_when(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    headers = researcher(idp, "glm-moratorium-sessions")
    with httpx.Client(timeout=60) as http:
        opened = {
            site: http.post(f"{urls[site]}/v1/glm/sessions", json=glm_body(GAUSSIAN), headers=headers)
            for site in SITES
        }
        for site, response in opened.items():
            assert response.status_code == 200, response.text
            session = response.json()["session"]
            http.delete(f"{urls[site]}/v1/glm/sessions/{session}", headers=headers)
    assert {site: r.json().get(MORATORIUM) for site, r in opened.items()} == {
        "site-a": None, "site-b": UNTIL["site-b"].isoformat(), "site-c": UNTIL["site-c"].isoformat(),
    }  # fmt: skip
    for site, response in opened.items():
        assert _schema_violations(urls[site], "/v1/glm/sessions", "200", response.json()) == [], site


def test_a_federated_fit_is_under_the_latest_moratorium_of_its_sites(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    # Site A coordinates: sites B and C answer over HTTP.
    response = httpx.post(
        f"{urls['site-a']}/v1/federated-glm", json=glm_body(GAUSSIAN), headers=researcher(idp), timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "converged"
    assert body[MORATORIUM] == UNTIL["site-b"].isoformat()
    assert {s["site"]: s.get(MORATORIUM) for s in body["sites"]} == {
        "site-a": None, "site-b": UNTIL["site-b"].isoformat(), "site-c": UNTIL["site-c"].isoformat(),
    }  # fmt: skip
    assert _schema_violations(urls["site-a"], "/v1/federated-glm", "200", body) == []


def test_the_federation_client_tells_a_fits_moratorium(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    token = researcher(idp)["Authorization"].removeprefix("Bearer ")
    model = {"numeric": GAUSSIAN["numeric"], "categorical": {"menostat": ["Pre", "Post"]}}
    # Site B coordinates: its own session runs in-process, site A's over HTTP.
    with FederationClient(urls["site-b"], token, sites=["site-a", "site-b"]) as client:
        fit = client.glm("gbsg2", "DSA-TEST-GBSG2", "DUO:0000006", "log_time", "gaussian", **model)
    assert fit.publication_moratorium_until == UNTIL["site-b"].isoformat()
    assert {s["site"]: s.get(MORATORIUM) for s in fit.sites} == {
        "site-a": None, "site-b": UNTIL["site-b"].isoformat(),
    }  # fmt: skip
    with FederationClient(urls["site-b"], token, sites=["site-a", "site-c"]) as client:
        fit = client.glm("gbsg2", "DSA-TEST-GBSG2", "DUO:0000006", "log_time", "gaussian", **model)
    assert fit.publication_moratorium_until == UNTIL["site-c"].isoformat()
    with FederationClient(urls["site-b"], token, sites=["site-a"]) as client:
        fit = client.glm("gbsg2", "DSA-TEST-GBSG2", "DUO:0000006", "log_time", "gaussian", **model)
    assert fit.publication_moratorium_until is None
    assert [MORATORIUM in s for s in fit.sites] == [False]
