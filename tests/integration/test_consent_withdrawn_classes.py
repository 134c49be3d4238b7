"""Consent classes after withdrawals, end to end over real HTTP on DuckDB and PostgreSQL stores: a class of
exactly min_cell_count patients is admitted until a steward records one of its patients' withdrawal, and
from then on no rule admits it, so two rules no longer differ by the patients it has left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gateway_site
import httpx
import pyarrow as pa
import pytest
from gateway_site import Site, bearer, build_site, running_gateway
from oidc_issuer import LoopbackTestIssuer

from gateway.synth import generate_site

MIN_CELL = 10  # DSA-TEST-OPEN's min_cell_count
ETHICS = "DUO:0000021"  # ethics approval required: admitted when the purpose carries an approval id
CLASS = f"DUO:0000042 {ETHICS}"
PURPOSE = {"duo": ["DUO:0000006"]}
APPROVED = {**PURPOSE, "ethics_approval_id": "EC-2026-117"}


def ten_patients_need_ethics_approval(index: int, rows: int, seed: int) -> pa.Table:
    """The synthetic cohort with DUO:0000021 taken from everyone, then given to exactly MIN_CELL patients
    of general research use (not marked withdrawn, bmi present): one consent class of MIN_CELL."""
    table = generate_site(index, rows, seed)
    consent = [
        " ".join(code for code in value.split(" ") if code != ETHICS)
        for value in table.column("consent_duo").to_pylist()
    ]
    columns = zip(
        consent, table.column("consent_withdrawn").to_pylist(), table.column("bmi").to_pylist(), strict=True
    )
    chosen = [i for i, (c, w, bmi) in enumerate(columns) if c == "DUO:0000042" and not w and bmi is not None]
    for i in chosen[:MIN_CELL]:
        consent[i] = CLASS
    position = table.schema.get_field_index("consent_duo")
    return table.set_column(position, table.schema.field(position), pa.array(consent, pa.string()))


def build(folder: Path, idp: LoopbackTestIssuer, store_url: str | None) -> Site:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_site, "generate_site", ten_patients_need_ethics_approval)
        return build_site(folder, idp.issuer_url, store_url=store_url)


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path: Path, idp: LoopbackTestIssuer) -> Site:
    store_url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return build(tmp_path, idp, store_url)


@pytest.fixture
def http(site: Site) -> Iterator[httpx.Client]:
    with running_gateway(site.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def answers(http: httpx.Client, idp: LoopbackTestIssuer, purpose: dict[str, Any], sub: str) -> dict[str, Any]:
    """The unfiltered count, summary of bmi and GLM iteration's n under `purpose`."""
    headers = bearer(idp, "researcher", sub=sub)
    base = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": purpose}
    got: dict[str, Any] = {}
    for kind, extra in (("count", {}), ("summary", {"params": {"column": "bmi"}})):
        response = http.post("/v1/queries", json={**base, "kind": kind, **extra}, headers=headers)
        assert response.status_code == 200, response.text
        (got[kind],) = response.json()["rows"]
    model = {"outcome": "bmi", "family": "gaussian", "numeric": ["systolic_bp"]}
    opened = http.post("/v1/glm/sessions", json={**base, "model": model}, headers=headers)
    assert opened.status_code == 200, opened.text
    path = f"/v1/glm/sessions/{opened.json()['session']}"
    step = http.post(f"{path}/iterations", json={"agreement": "DSA-TEST-OPEN", "beta": [25.0, 0.0]},
                     headers=headers)  # fmt: skip
    assert step.status_code == 200, step.text
    got["glm_n"] = step.json()["n"]
    http.delete(path, headers=headers)
    return got


def test_a_withdrawal_that_takes_a_class_below_min_cell_count_leaves_it_out_under_every_rule(
    site: Site, http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    """Attack: the class of exactly MIN_CELL patients needing ethics approval is admitted with an approval
    id, so the answers with and without the id differ by those patients. One of them withdraws. Counted as
    published the class still held MIN_CELL rows and stayed admitted: the answers with and without the id
    then differed by the 9 left (their count, their bmi sum), fewer than min_cell_count. Counted without
    the withdrawal it holds 9 and no rule admits it: both answers rest on the same rows."""
    source = site.source
    members = [i for i, c in enumerate(source.column("consent_duo").to_pylist()) if c == CLASS]
    assert len(members) == MIN_CELL
    bmi = source.column("bmi").to_pylist()

    plain, approved = answers(http, idp, PURPOSE, "wd-class-1"), answers(http, idp, APPROVED, "wd-class-2")
    assert approved["count"]["count"] - plain["count"]["count"] == MIN_CELL  # admitted as it stands
    assert approved["summary"]["n"] - plain["summary"]["n"] == MIN_CELL
    assert approved["summary"]["sum"] - plain["summary"]["sum"] == pytest.approx(sum(bmi[i] for i in members))
    assert approved["glm_n"] - plain["glm_n"] == MIN_CELL

    mrn = source.column("patient_id")[members[0]].as_py()
    steward = bearer(idp, "steward", sub="steward-1")
    done = http.post("/v1/steward/datasets/cohort/withdrawals", json={"patients": [mrn]}, headers=steward)
    assert done.status_code == 200 and done.json()["new"] == 1

    plain_after = answers(http, idp, PURPOSE, "wd-class-3")
    approved_after = answers(http, idp, APPROVED, "wd-class-4")
    assert plain_after == plain  # the withdrawn patient was never in the population without the id
    assert approved_after == plain_after
