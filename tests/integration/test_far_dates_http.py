"""A site whose admission dates include some far beyond pandas' nanosecond range (2300-01-01 before the
ingest's date shift, the style of an 'open' or 'unknown' sentinel date) answers counts and summaries
grouped by admission date over HTTP, on DuckDB and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import gateway_site
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from gateway_site import bearer, build_site, running_gateway
from oidc_issuer import LoopbackTestIssuer

from gateway.synth import generate_site

FAR = dt.date(2300, 1, 1)


def _with_far_dates(*args: Any, **kwargs: Any) -> pa.Table:
    table = generate_site(*args, **kwargs)
    i = table.schema.get_field_index("admission_date")
    far = pa.array([FAR if k % 50 == 0 else None for k in range(table.num_rows)], pa.date32())
    return table.set_column(i, table.schema.field(i), pc.coalesce(far, table.column(i)))


@pytest.mark.parametrize("store", ["duckdb", "postgresql"])
def test_groups_of_a_far_date_are_answered(
    store: str,
    tmp_path: Path,
    idp: LoopbackTestIssuer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(gateway_site, "generate_site", _with_far_dates)
    store_url = request.getfixturevalue("pg_url") if store == "postgresql" else None
    site = build_site(tmp_path, idp.issuer_url, store_url=store_url)
    base = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}}
    far = {"column": "admission_date", "op": ">", "value": "2200-01-01"}
    with running_gateway(site.settings) as url, httpx.Client(base_url=url, timeout=30) as http:

        def rows(**extra: Any) -> list[dict[str, Any]]:
            response = http.post("/v1/queries", json={**base, **extra}, headers=bearer(idp, "researcher"))
            assert response.status_code == 200, response.text
            found: list[dict[str, Any]] = response.json()["rows"]
            return found

        (total,) = rows(kind="count", filters=far)
        # Shifted per patient, the far dates are each rare: released merged as "(other)", summed.
        assert total["count"] >= 10
        (merged, _) = rows(kind="count", group_by=["admission_date"], filters=far)
        assert (merged["admission_date"], merged["count"]) == ("(other)", total["count"])
        (summary,) = rows(kind="summary", group_by=["admission_date"], params={"column": "bmi"}, filters=far)
        assert summary["n"] == total["count"]
        everything = rows(kind="count", group_by=["admission_date"])
        assert sum(r["count"] for r in everything if r["margin"] is None) == everything[-1]["count"]
        rows(kind="summary", group_by=["admission_date"], params={"column": "bmi"})
