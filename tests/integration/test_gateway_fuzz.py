"""No input of any kind produces a 500: random bodies and mutated specs against a real gateway."""

from __future__ import annotations

import json
from typing import Any

import httpx
from gateway_site import bearer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oidc_issuer import LoopbackTestIssuer

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
VALID = {
    "dataset": "cohort",
    "agreement": "DSA-TEST-OPEN",
    "purpose": {"duo": ["DUO:0000006"]},
    "kind": "crosstab",
    "group_by": ["sex"],
    "filters": {"column": "bmi", "op": ">", "value": 25},
}
FIELDS = ["dataset", "agreement", "purpose", "kind", "group_by", "filters", "params", "destination"]


def assert_problem(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == response.status_code


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON)
def test_random_json_bodies(http: httpx.Client, idp: LoopbackTestIssuer, body: Any) -> None:
    assert_problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher", sub="fuzz")))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_mutated_specs(http: httpx.Client, idp: LoopbackTestIssuer, field: str, value: Any) -> None:
    body = {**VALID, field: value}
    assert_problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher", sub="fuzz")))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_raw_bytes_and_steward_documents(http: httpx.Client, idp: LoopbackTestIssuer, raw: bytes) -> None:
    headers = {**bearer(idp, "researcher", sub="fuzz"), "content-type": "application/json"}
    assert_problem(http.post("/v1/queries", content=raw, headers=headers))
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        document = {"garbage": raw.hex()}
    steward = bearer(idp, "steward", sub="fuzz-steward")
    assert_problem(http.put("/v1/steward/policy-data/transfer", json=document, headers=steward))


def test_agreement_ids_with_control_characters_are_a_422(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    for agreement in ("\x8d\\AQë\U000cad09", "DSA 2026", "", "x" * 200):
        response = http.post(
            "/v1/queries", json={**VALID, "agreement": agreement}, headers=bearer(idp, "researcher")
        )
        assert response.status_code == 422, (agreement, response.text)
        assert response.json()["field"].endswith("agreement")


def test_odd_paths_without_a_token_are_a_401_not_a_500(http: httpx.Client) -> None:
    paths = ("/v1/steward/datasets/a b/withdrawals", "/v1/steward/datasets/cohort/withdrawals",
             "/v1/queries/%00%ff", "/v1/queries/ü{x}", "/v1/queries/" + "0123456789abcdef" * 2)  # fmt: skip
    for path in paths:
        response = http.post(path, json={"patients": ["x"]}) if "withdrawals" in path else http.get(path)
        assert response.status_code == 401, (path, response.text)
