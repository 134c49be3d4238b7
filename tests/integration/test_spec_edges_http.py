"""Specs at the edges of what an answer's columns can hold, over HTTP: quantile probabilities on one point of
the grid are refused as an invalid query naming `params.probs`, and the refusal is audited, never an internal
error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_site import audit_size, bearer, entries_since
from oidc_issuer import LoopbackTestIssuer

QUERY = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}}


def quantiles(probs: list[float]) -> dict[str, Any]:
    return {**QUERY, "kind": "quantiles", "params": {"column": "bmi", "probs": probs}}


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([0.15, 0.15 + 4e-11], "probs must be distinct: probs[0] and probs[1] are both 0.15"),
        ([0.25, 0.5, 0.5 - 4e-11], "probs must be distinct: probs[1] and probs[2] are both 0.5"),
    ],
)
def test_probabilities_on_one_point_of_the_grid_are_an_audited_refusal(
    http: httpx.Client, idp: LoopbackTestIssuer, probs: list[float], message: str
) -> None:
    start = audit_size(http, idp)
    response = http.post("/v1/queries", json=quantiles(probs), headers=bearer(idp, "researcher"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["title"] == "The request body is not a valid query"
    assert problem["field"] == "params.probs"
    assert problem["detail"] == f"params.probs: {message}"
    entries = entries_since(http, idp, start)
    (refused,) = [e for e in entries if e["type"] == "query.refused"]
    assert refused["payload"]["reasons"] == [f"params.probs: {message}"]
    assert not [e for e in entries if e["type"] in ("query.executed", "query.released")]


def test_distinct_points_of_the_grid_are_answered(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    response = http.post("/v1/queries", json=quantiles([0.25, 0.5]), headers=bearer(idp, "researcher"))
    assert response.status_code == 200, response.text
    assert response.json()["columns"] == ["n", "q0.25", "q0.5", "suppressed", "suppression_reason"]
