"""A dataset's consent terms reach the policy: over HTTP, a version ingested as disease-specific research
(DUO:0000007) for diabetes answers a purpose naming type 2 diabetes and refuses one naming cancer; and the
gateway's question to the site's policy carries a moratorium's, a time limit's and an area's terms."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

import httpx
import pytest
from gateway_site import ROOT, Site, bearer, running_gateway
from oidc_issuer import LoopbackTestIssuer

from connectors import ParquetConnector
from gateway.auth import Principal
from gateway.client import result_frame
from gateway.decision import PolicyDecisionPoint
from gateway.pipeline import decision_input
from gateway.query import parse_query_spec
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import ConsentTerms, Store

DIABETES, TYPE_2_DIABETES, CANCER = "MONDO:0005015", "MONDO:0005148", "MONDO:0004992"


def _count(disease: str) -> dict[str, Any]:
    purpose = {"duo": ["DUO:0000007"], "disease": disease}
    return {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": purpose, "kind": "count"}


def test_disease_specific_consent_answers_its_diseases_only(tmp_site: Site, idp: LoopbackTestIssuer) -> None:
    # The site's cohort again, as a new version whose consent is disease-specific research for diabetes.
    example = (ROOT / "examples/cohort.spec.yaml").read_text()
    spec_path = tmp_site.root / "diabetes.spec.yaml"
    spec_path.write_text(
        re.sub(r"^duo: .*$", f"duo: [DUO:0000007]\ndiseases: [{DIABETES}]", example, count=1, flags=re.M)
    )
    assert tmp_site.settings.master_key_file is not None
    with Store(tmp_site.settings.store_url) as store:
        published = ingest(
            ParquetConnector(tmp_site.root / "patients.parquet"), load_spec(spec_path), str(spec_path),
            SecretKey.from_file(tmp_site.settings.master_key_file), store, jurisdiction="DE", override_k=True,
        ).entry  # fmt: skip
    assert published.version == 2 and published.consent_terms == ConsentTerms(diseases=(DIABETES,))

    researcher = bearer(idp, "researcher")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        allowed = http.post("/v1/queries", json=_count(TYPE_2_DIABETES), headers=researcher)
        denied = http.post("/v1/queries", json=_count(CANCER), headers=researcher)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["rows"][0]["count"] > 0
    assert denied.status_code == 403, denied.text
    assert denied.json()["reasons"] == [
        "the consent of dataset cohort does not cover the purpose DUO:0000007 (disease specific research)"
    ]


TODAY = dt.datetime.now(dt.UTC).date()
LATER, EARLIER = TODAY + dt.timedelta(days=30), TODAY - dt.timedelta(days=30)


def _publish(site: Site, name: str, consent: str) -> Any:
    """The site's cohort again, as a new version with the spec's `duo` line replaced by `consent`."""
    example = (ROOT / "examples/cohort.spec.yaml").read_text()
    spec_path = site.root / f"{name}.spec.yaml"
    spec_path.write_text(re.sub(r"^duo: .*$", consent, example, count=1, flags=re.M))
    assert site.settings.master_key_file is not None
    with Store(site.settings.store_url) as store:
        return ingest(
            ParquetConnector(site.root / "patients.parquet"), load_spec(spec_path), str(spec_path),
            SecretKey.from_file(site.settings.master_key_file), store, jurisdiction="DE", override_k=True,
        ).entry  # fmt: skip


def test_an_answer_under_a_publication_moratorium_says_until_when(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    published = _publish(
        tmp_site, "moratorium", f"duo: [DUO:0000042, DUO:0000024]\nmoratorium_until: {LATER}"
    )
    assert published.consent_terms == ConsentTerms(moratorium_until=LATER)
    query = {**_count(TYPE_2_DIABETES), "purpose": {"duo": ["DUO:0000006"]}}
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        answer = http.post("/v1/queries", json=query, headers=bearer(idp, "researcher"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["policy"]["publication_moratorium_until"] == LATER.isoformat()
    assert result_frame(answer.json()).attrs == {"publication_moratorium_until": LATER.isoformat()}


@pytest.mark.parametrize(
    ("code", "terms", "decision", "moratorium"),
    [
        ("DUO:0000024", ConsentTerms(moratorium_until=LATER), "allow", LATER),
        ("DUO:0000024", ConsentTerms(moratorium_until=EARLIER), "allow", None),
        ("DUO:0000025", ConsentTerms(use_until=LATER), "allow", None),
        ("DUO:0000025", ConsentTerms(use_until=EARLIER), "deny", None),
        ("DUO:0000022", ConsentTerms(geographic_area=("DE", "FR")), "allow", None),
        ("DUO:0000022", ConsentTerms(), "deny", None),  # no area recorded: the site's own country, DE
    ],
)
def test_dated_and_regional_terms_reach_the_policy(
    site: Site, code: str, terms: ConsentTerms, decision: str, moratorium: dt.date | None
) -> None:
    with Store(site.settings.store_url) as store:
        entry = store.latest("cohort")
    assert entry is not None
    entry = dataclasses.replace(entry, duo=["DUO:0000042", code], consent_terms=terms)
    researcher = Principal(sub="x", org="org-aphp", country="FR", roles=frozenset({"researcher"}), visas=(),
                           issuer="test")  # fmt: skip
    asked = parse_query_spec({**_count(TYPE_2_DIABETES), "purpose": {"duo": ["DUO:0000006"]}})
    answer = PolicyDecisionPoint(site.settings).decide(decision_input(researcher, asked, entry))
    assert answer.decision == decision, answer.reasons
    if answer.obligations is not None:
        assert answer.obligations.publication_moratorium_until == moratorium
