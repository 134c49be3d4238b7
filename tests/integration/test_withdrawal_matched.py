"""A consent withdrawal over real HTTP says how many of the patients it names have rows in the dataset's
newest version (`matched`), on DuckDB and PostgreSQL stores: a mistyped identifier is recorded all the same
but matches nothing, so it no longer passes for a withdrawn patient. Neither the answer nor the audit entry
holds an identifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from gateway_site import Site, audit_size, bearer, build_site, entries_since, running_gateway
from oidc_issuer import LoopbackTestIssuer

import gateway.routes.steward
from gateway.state import GatewayState

WITHDRAWALS = "/v1/steward/datasets/cohort/withdrawals"
MADE_UP = "NOT-A-PATIENT-999"


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path: Path, idp: LoopbackTestIssuer) -> Site:
    store_url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return build_site(tmp_path, idp.issuer_url, rows=400, store_url=store_url)


@pytest.fixture
def http(site: Site) -> Iterator[httpx.Client]:
    with running_gateway(site.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def withdrawn_count(site: Site, http: httpx.Client, steward: dict[str, str]) -> int:
    """How many patients of the cohort the state database holds as withdrawn."""
    (listed,) = http.get("/v1/steward/datasets", headers=steward).json()
    state = GatewayState(site.settings.state_url)
    try:
        return state.withdrawn_count("cohort", listed["key_context"])
    finally:
        state.close()


def test_matched_counts_a_known_patient_and_not_a_made_up_one(
    site: Site, http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward", sub="steward-matched")
    known = site.source.column("patient_id")[0].as_py()
    start = audit_size(http, idp)

    done = http.post(WITHDRAWALS, json={"patients": [known, MADE_UP]}, headers=steward)
    assert done.status_code == 200, done.text
    assert done.json() == {"dataset": "cohort", "patients": 2, "new": 2, "matched": 1}
    assert known not in done.text and MADE_UP not in done.text
    # The made-up one is recorded too: a later version may hold it.
    assert withdrawn_count(site, http, steward) == 2

    # Sent again: nothing new, the same match; a patient named twice is one patient.
    again = http.post(WITHDRAWALS, json={"patients": [known, known, MADE_UP]}, headers=steward)
    assert again.json() == {"dataset": "cohort", "patients": 3, "new": 0, "matched": 1}
    alone = http.post(WITHDRAWALS, json={"patients": [MADE_UP]}, headers=steward)
    assert alone.json() == {"dataset": "cohort", "patients": 1, "new": 0, "matched": 0}

    logged = [e for e in entries_since(http, idp, start) if e["type"] == "consent.withdrawn"]
    assert [e["payload"] for e in logged] == [
        {"dataset": "cohort", "patients": 2, "new": 2, "matched": 1},
        {"dataset": "cohort", "patients": 3, "new": 0, "matched": 1},
        {"dataset": "cohort", "patients": 1, "new": 0, "matched": 0},
    ]
    export = http.get("/v1/audit/export", headers=bearer(idp, "auditor")).text
    assert known not in export and MADE_UP not in export


def test_a_withdrawal_is_recorded_when_its_rows_cannot_be_counted(
    site: Site, http: httpx.Client, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(*_: object) -> int:
        raise duckdb.IOException("the store cannot be read now")

    monkeypatch.setattr(gateway.routes.steward, "matched", unreadable)
    steward = bearer(idp, "steward", sub="steward-uncounted")
    known = site.source.column("patient_id")[1].as_py()
    start = audit_size(http, idp)
    done = http.post(WITHDRAWALS, json={"patients": [known]}, headers=steward)
    assert done.status_code == 200, done.text
    assert done.json() == {"dataset": "cohort", "patients": 1, "new": 1, "matched": None}
    assert withdrawn_count(site, http, steward) == 1
    (logged,) = [e for e in entries_since(http, idp, start) if e["type"] == "consent.withdrawn"]
    assert logged["payload"] == {"dataset": "cohort", "patients": 1, "new": 1}
