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
