"""The OpenAPI page the gateway serves says what its endpoints really answer: every endpoint behind a role
documents its refusals as problem+json, the refusals the suite sees are documented, and the bodies match
the documented schema. HTTP status codes are written in gateway/problems.py only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_site import bearer
from oidc_issuer import LoopbackTestIssuer

from gateway.problems import PROBLEM_JSON, Problem

ROOT = Path(__file__).resolve().parents[2]
# The C2SP witness endpoint answers the protocol's text/plain bodies and takes no bearer token.
OWN_FORMAT = {("post", "/v1/witness/add-checkpoint")}
ROLE_REFUSALS = {"401", "403", "422", "503"}
QUERY = {
    "dataset": "cohort",
    "agreement": "DSA-TEST-OPEN",
    "purpose": {"duo": ["DUO:0000006"]},
    "kind": "count",
}


@pytest.fixture(scope="module")
def openapi(gateway_url: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{gateway_url}/openapi.json").json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items() if path.startswith("/v1/")
        for method, op in item.items() if (method, path) not in OWN_FORMAT
    ]  # fmt: skip


def test_every_endpoint_behind_a_role_documents_its_refusals_as_problems(openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    assert len(ops) >= 20
    for method, path, op in ops:
        responses = op["responses"]
        missing = ROLE_REFUSALS - set(responses)
        assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
        # A route's own cause of a 403 or 503 does not hide the one every endpoint behind a role has.
        assert "role" in responses["403"]["description"], f"{method.upper()} {path}"
        assert "identity provider" in responses["503"]["description"], f"{method.upper()} {path}"
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                content = response.get("content", {})
                assert list(content) == [PROBLEM_JSON], f"{method.upper()} {path} {status}: {list(content)}"
                assert content[PROBLEM_JSON]["schema"]["title"] == "Problem"
    assert "HTTPValidationError" not in str(openapi)


@pytest.mark.parametrize(("method", "path", "statuses"), [
    ("post", "/v1/queries", {"200", "202", "403", "404", "422", "429", "503"}),
    ("get", "/v1/queries/{request_id}", {"200", "403", "404"}),
    ("post", "/v1/steward/approvals/{request_id}", {"200", "403", "404", "409", "422"}),
    ("put", "/v1/steward/policy-data/{name}", {"404", "422"}),
    ("post", "/v1/steward/datasets/{dataset}/withdrawals", {"404", "409", "503"}),
    ("get", "/v1/audit/entries", {"422"}),
    ("post", "/v1/glm/sessions/{session_id}/iterations", {"403", "404", "422", "429"}),
])  # fmt: skip
def test_the_refusals_each_endpoint_gives_are_documented(
    openapi: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    documented = set(openapi["paths"][path][method]["responses"])
    assert statuses <= documented, sorted(statuses - documented)


def test_refusal_bodies_match_the_documented_problem_schema(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any]
) -> None:
    documented = set(openapi["paths"]["/v1/queries"]["post"]["responses"]["403"]["content"][PROBLEM_JSON]
                     ["schema"]["properties"])  # fmt: skip
    refusals = [
        http.post("/v1/queries", json={"dataset": "cohort"}, headers=bearer(idp, "researcher")),
        http.get("/v1/steward/approvals", headers=bearer(idp, "researcher")),
        http.get("/v1/audit/entries", params={"start": 3, "end": 1}, headers=bearer(idp, "auditor")),
        http.get("/v1/queries/req-unknown", headers=bearer(idp, "researcher")),
    ]
    assert [r.status_code for r in refusals] == [422, 403, 422, 404]
    for response in refusals:
        assert response.headers["content-type"] == PROBLEM_JSON
        body = response.json()
        assert set(body) <= documented, set(body) - documented
        assert Problem.model_validate(body).status == response.status_code


# Written status codes: the HTTPStatus enum, a status_code compared with or set to a number, a response
# table keyed by numbers, or a handler returning one.
_CODES = re.compile(
    r"\bHTTPStatus\b|status_code\s*(?:[=!<>]=|[<>=])\s*[1-5]\d\d\b|(?:^|[{,])\s*[1-5]\d\d\s*:"
    r"|return\s+[1-5]\d\d\s*,"
)


def test_http_status_codes_are_written_in_one_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "gateway").rglob("*.py")) if path.name != "problems.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _CODES.search(line.split("#")[0])
    ]  # fmt: skip
    assert not found, "\n".join(found)
    problems_source = (ROOT / "gateway" / "problems.py").read_text()
    assert _CODES.search(problems_source)  # the pattern does find codes where they are written


# Who may call what: every endpoint under /v1/ belongs to one role (the witness's add-checkpoint to none).
ROLE_OF_PREFIX = {
    "/v1/queries": "researcher",
    "/v1/federated-queries": "researcher",
    "/v1/glm/": "researcher",
    "/v1/federated-glm": "researcher",
    "/v1/steward/": "steward",
    "/v1/witness/submissions": "steward",
    "/v1/audit/": "auditor",
}


def role_of(path: str) -> str:
    roles = [role for prefix, role in ROLE_OF_PREFIX.items() if path.startswith(prefix)]
    assert len(roles) == 1, f"{path} has no single role in ROLE_OF_PREFIX"
    return roles[0]


def test_every_endpoint_refuses_every_other_role_and_no_token(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any]
) -> None:
    checked = 0
    for method, path, _ in operations(openapi):
        url = re.sub(r"\{[^}]+\}", "x1", path)
        own = role_of(path)
        assert http.request(method, url, json={}).status_code == 401, f"{method.upper()} {path}"
        for role in {"researcher", "steward", "auditor"} - {own}:
            response = http.request(method, url, json={}, headers=bearer(idp, role))
            assert response.status_code == 403, f"{method.upper()} {path} as {role}: {response.status_code}"
            assert response.json()["reasons"], f"{method.upper()} {path} as {role}"
        checked += 1
    assert checked >= 20


def documented_schema(openapi: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    """The JSON schema of an answer, with its component references resolved one level down."""
    schema: dict[str, Any] = openapi["paths"][path][method]["responses"][status]["content"][
        "application/json"
    ]["schema"]
    if "$ref" in schema:
        schema = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def assert_fits(body: dict[str, Any], schema: dict[str, Any], components: dict[str, Any]) -> None:
    assert set(schema["required"]) <= set(body), set(schema["required"]) - set(body)
    if not schema.get("additionalProperties", False):
        assert set(body) <= set(schema["properties"]), set(body) - set(schema["properties"])
    for name, value in body.items():
        prop = schema["properties"].get(name, {})
        if "$ref" in prop and isinstance(value, dict):
            assert_fits(value, components[prop["$ref"].rsplit("/", 1)[1]], components)


def test_answers_match_their_documented_schemas(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any]
) -> None:
    components = openapi["components"]["schemas"]
    researcher = bearer(idp, "researcher", sub="schema-researcher")
    released = http.post("/v1/queries", json={**QUERY, "kind": "crosstab", "group_by": ["sex"]},
                         headers=researcher)  # fmt: skip
    assert released.status_code == 200
    assert_fits(released.json(), documented_schema(openapi, "/v1/queries", "post", "200"), components)
    assert released.json()["disclosure"]["min_cell_count"] == 10
    pending = http.post(
        "/v1/queries",
        json={**QUERY, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "bmi"}},
        headers=researcher,
    )
    assert pending.status_code == 202
    assert_fits(pending.json(), documented_schema(openapi, "/v1/queries", "post", "202"), components)
    state = http.get(pending.json()["poll"], headers=researcher)
    poll_schema = openapi["paths"]["/v1/queries/{request_id}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    choices = [components[ref["$ref"].rsplit("/", 1)[1]] for ref in poll_schema["anyOf"]]
    assert [c["title"] for c in choices] == ["QueryAnswer", "RequestState"]
    assert_fits(state.json(), choices[1], components)


@pytest.mark.parametrize("path", ["/v1/audit/checkpoint", "/v1/audit/export", "/v1/audit/entries"])
def test_an_answer_is_documented_in_the_media_type_it_is_sent_in(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any], path: str
) -> None:
    answer = http.get(path, headers=bearer(idp, "auditor"))
    assert answer.is_success
    documented = list(openapi["paths"][path]["get"]["responses"]["200"]["content"])
    assert documented == [answer.headers["content-type"].split(";")[0]]


def test_bounds_enforced_are_bounds_documented(openapi: dict[str, Any]) -> None:
    params = openapi["paths"]["/v1/steward/activity"]["get"]["parameters"]
    (hours,) = [p for p in params if p["name"] == "hours"]
    assert (hours["schema"]["minimum"], hours["schema"]["maximum"]) == (1, 8784)
    quantiles = openapi["components"]["schemas"]["QuantilesParams"]
    assert "1 to 5" in quantiles["description"] and quantiles["properties"]["probs"]["maxItems"] == 5


def test_a_glm_session_sent_to_a_steward_is_documented_with_its_body(openapi: dict[str, Any]) -> None:
    accepted = openapi["paths"]["/v1/glm/sessions"]["post"]["responses"]["202"]
    schema = accepted["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/GlmPending")
    assert set(openapi["components"]["schemas"]["GlmPending"]["properties"]) == {"status", "reasons"}
