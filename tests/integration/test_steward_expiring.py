"""`GET /v1/steward/expiring` over HTTP: a steward sees an agreement ending within the window from the
running policy data; other roles are refused; a window out of bounds is a 422 naming `within_days`; a store
that cannot be read is a 503."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import httpx
import pytest
from gateway_site import TEST_AGREEMENTS, Site, bearer, running_gateway
from oidc_issuer import LoopbackTestIssuer

from gateway.routes.steward import Expiring
from pseudonymize.store import CATALOG

TODAY = dt.datetime.now(dt.UTC).date()


def test_a_steward_sees_an_agreement_ending(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    steward = bearer(idp, "steward", sub="expiry-steward")
    agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
    ending = (TODAY + dt.timedelta(days=10)).isoformat()
    agreements["DSA-TEST-ENDING"] = {**TEST_AGREEMENTS["DSA-TEST-OPEN"], "not_after": ending}
    replaced = http.put("/v1/steward/policy-data/agreements", json=agreements, headers=steward)
    assert replaced.status_code == 200, replaced.text

    answer = http.get("/v1/steward/expiring", params={"within_days": 30}, headers=steward)
    assert answer.status_code == 200, answer.text
    body = Expiring.model_validate(answer.json()).model_dump()
    assert (body["today"], body["within_days"]) == (TODAY.isoformat(), 30)
    items = {(i["kind"], i["id"]): i for i in body["items"]}
    assert items[("agreement", "DSA-TEST-ENDING")] == {
        "kind": "agreement", "id": "DSA-TEST-ENDING", "ends": ending, "days_left": 10, "status": "ending",
        "affects": ["cohort"], "reason": None,
    }  # fmt: skip
    assert ("agreement", "DSA-TEST-OPEN") not in items  # in force for two years
    assert all(i["status"] != "invalid" for i in body["items"])
    ends = [(i["ends"], i["kind"], i["id"]) for i in body["items"]]
    assert ends == sorted(ends)

    default = http.get("/v1/steward/expiring", headers=steward).json()
    assert default["within_days"] == 90 and ("agreement", "DSA-TEST-ENDING") in {
        (i["kind"], i["id"]) for i in default["items"]
    }
    narrow = http.get("/v1/steward/expiring", params={"within_days": 9}, headers=steward).json()
    assert "DSA-TEST-ENDING" not in {i["id"] for i in narrow["items"]}


def test_a_researcher_is_refused(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    answer = http.get("/v1/steward/expiring", headers=bearer(idp, "researcher"))
    assert answer.status_code == 403, answer.text
    assert http.get("/v1/steward/expiring").status_code == 401


@pytest.mark.parametrize("within", ["-1", "3651", "ninety", "1.5"])
def test_a_window_out_of_bounds_is_422_naming_it(
    http: httpx.Client, idp: LoopbackTestIssuer, within: str
) -> None:
    steward = bearer(idp, "steward", sub="expiry-steward")
    answer = http.get("/v1/steward/expiring", params={"within_days": within}, headers=steward)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["field"] == "within_days"


def test_a_catalog_that_cannot_be_read_is_503(tmp_site: Site, idp: LoopbackTestIssuer) -> None:
    steward = bearer(idp, "steward", sub="expiry-steward")
    store = Path(tmp_site.settings.store_url.removeprefix("duckdb:///"))
    with duckdb.connect(str(store)) as con:  # a row no Store wrote: its consent terms do not parse
        con.execute(f"UPDATE {CATALOG} SET consent_terms = '{{not json'")
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        malformed = http.get("/v1/steward/expiring", headers=steward)
    store.rename(store.with_suffix(".moved"))  # as a restart finds it
    with running_gateway(tmp_site.settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        missing = http.get("/v1/steward/expiring", headers=steward)
    for answer in (malformed, missing):
        assert answer.status_code == 503, answer.text
        assert answer.json()["title"] == "Store unavailable"
        assert str(tmp_site.root) not in answer.text and "duckdb" not in answer.text
