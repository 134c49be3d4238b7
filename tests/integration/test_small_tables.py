"""Tables of one DuckDB row group are queried on a single-thread DuckDB instance attached to the store
(`SiteRuntime.small_tables`); larger ones on the store's own. Both answer alike, kind by kind."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gateway_site import Site, bearer, running_gateway
from oidc_issuer import LoopbackTestIssuer

import gateway.pipeline
import gateway.runtime

PURPOSE = {"duo": ["DUO:0000006"]}
SPECS: list[dict[str, Any]] = [
    {"kind": "count", "filters": {"column": "bmi", "op": ">", "value": 24.5}},
    {"kind": "crosstab", "group_by": ["sex", "smoking"]},
    {"kind": "summary", "group_by": ["sex"], "params": {"column": "bmi"}},
    {"kind": "histogram", "params": {"column": "bmi", "edges": [15, 20, 25, 30, 35, 40]}},
    {"kind": "quantiles", "params": {"column": "systolic_bp", "probs": [0.25, 0.5, 0.75]}},
]


def _answers(url: str, idp: LoopbackTestIssuer, sub: str) -> list[Any]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for extra in SPECS:
            body = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": PURPOSE, **extra}
            response = http.post("/v1/queries", json=body, headers=bearer(idp, "researcher", sub=sub))
            assert response.status_code == 200, response.text
            answer = response.json()
            out.append({k: v for k, v in answer.items() if k not in ("request_id", "result_hash")})
    return out


def test_small_and_large_tables_run_on_their_engines_and_answer_alike(
    tmp_site: Site, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[sa.Engine] = []
    execute_together = gateway.pipeline.execute_together

    def spy(engine: sa.Engine, *args: Any, **kwargs: Any) -> Any:
        used.append(engine)
        return execute_together(engine, *args, **kwargs)

    monkeypatch.setattr(gateway.pipeline, "execute_together", spy)
    with running_gateway(tmp_site.settings) as url:
        small = _answers(url, idp, "small-tables")
        single = {e.url.database for e in used}
        used.clear()
        # The same version, counted as larger than a row group: it goes to the store's own engine.
        monkeypatch.setattr(gateway.runtime, "ONE_ROW_GROUP", 0)
        large = _answers(url, idp, "large-tables")
        own = {e.url.database for e in used}
    assert single == {":memory:"}  # the single-thread instance, which attaches the store file
    assert own == {str(tmp_site.settings.store_url).removeprefix("duckdb:///")}
    assert small == large
