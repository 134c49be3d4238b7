"""The OpenAPI page the gateway serves says what its endpoints really answer: every endpoint behind a role
documents its refusals as problem+json, the refusals the suite sees are documented, and the bodies match
the documented schema. HTTP status codes are written in gateway/problems.py only."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_site import Site, bearer
from jsonschema import Draft202012Validator
from oidc_issuer import LoopbackTestIssuer

from gateway.federation.coordinator import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    POOLED_KINDS,
    parse_federated,
)
from gateway.problems import PROBLEM_JSON, Problem
from gateway.refusal import Refusal

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


def test_every_operation_behind_a_role_says_it_takes_a_bearer_token_with_that_role(
    openapi: dict[str, Any],
) -> None:
    scheme = openapi["components"]["securitySchemes"]["oidcBearer"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for method, path, op in operations(openapi):
        assert op.get("security") == [{"oidcBearer": []}], f"{method.upper()} {path}"
        assert op["x-fedgate-role"] == role_of(path), f"{method.upper()} {path}"
        assert op["description"].endswith(f"Needs a bearer token with the `{role_of(path)}` role.")
    # What peers, load balancers and browsers call takes no researcher's token.
    for method, path in [*OWN_FORMAT, ("get", "/healthz")]:
        assert "security" not in openapi["paths"][path][method], f"{method.upper()} {path}"


def documented_schema(openapi: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    """The JSON schema the served page gives for an answer."""
    schema: dict[str, Any] = openapi["paths"][path][method]["responses"][status]["content"][
        "application/json"
    ]["schema"]
    return schema


def violations(value: Any, schema: dict[str, Any], components: dict[str, Any], at: str = "body") -> list[str]:
    """Where a JSON value breaks a schema of the served page (JSON Schema 2020-12, which OpenAPI 3.1 uses),
    each as `where: what`; none when it fits. A `$ref` applies beside its siblings: FastAPI writes a route's
    own `{"type": "object", "additionalProperties": true}` next to the documented model's reference."""
    validator = Draft202012Validator({**schema, "components": {"schemas": components}})
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [
        at + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path) + f": {e.message}"
        for e in errors
    ]


def test_answers_match_their_documented_schemas(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any]
) -> None:
    components = openapi["components"]["schemas"]
    researcher = bearer(idp, "researcher", sub="schema-researcher")
    released = http.post("/v1/queries", json={**QUERY, "kind": "crosstab", "group_by": ["sex"]},
                         headers=researcher)  # fmt: skip
    assert released.status_code == 200
    released_schema = documented_schema(openapi, "/v1/queries", "post", "200")
    assert violations(released.json(), released_schema, components) == []
    assert released.json()["disclosure"]["min_cell_count"] == 10
    pending = http.post(
        "/v1/queries",
        json={**QUERY, "agreement": "DSA-TEST-APPROVAL", "kind": "summary", "params": {"column": "bmi"}},
        headers=researcher,
    )
    assert pending.status_code == 202
    pending_schema = documented_schema(openapi, "/v1/queries", "post", "202")
    assert violations(pending.json(), pending_schema, components) == []
    state = http.get(pending.json()["poll"], headers=researcher)
    poll_schema = documented_schema(openapi, "/v1/queries/{request_id}", "get", "200")
    choices = [components[ref["$ref"].rsplit("/", 1)[1]] for ref in poll_schema["anyOf"]]
    assert [c["title"] for c in choices] == ["QueryAnswer", "RequestState"]
    assert violations(state.json(), choices[1], components) == []
    assert violations(state.json(), poll_schema, components) == []


def documents_fields(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """Whether a body's schema names its fields: an object with properties, a list or map of such, or a
    choice of them. A `$ref`'s siblings are FastAPI's own and add nothing."""
    if "$ref" in schema:
        return documents_fields(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "anyOf" in schema:
        return all(documents_fields(choice, components) for choice in schema["anyOf"])
    if schema.get("type") == "array":
        return documents_fields(schema.get("items", {}), components)
    if schema.get("properties"):
        return True
    values = schema.get("additionalProperties")
    return isinstance(values, dict) and documents_fields(values, components)


def json_answers(openapi: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every JSON success body of the API by (method, path, status), with its documented response."""
    return {
        (method, path, status): response
        for method, path, op in operations(openapi)
        for status, response in op["responses"].items() if status.startswith("2")
        and "application/json" in response.get("content", {})
    }  # fmt: skip


def test_every_success_body_is_documented_with_its_fields(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    answers = json_answers(openapi)
    assert len(answers) >= 20
    for (method, path, status), response in answers.items():
        schema = response["content"]["application/json"]["schema"]
        assert documents_fields(schema, components), f"{method.upper()} {path} {status}: {schema}"
        assert response["description"] != "Successful Response", f"{method.upper()} {path} {status}"


def misnamed(body: Any) -> Any:
    """The body with its first field renamed (in its first item, for a list)."""
    if isinstance(body, list):
        return [misnamed(body[0]), *body[1:]]
    assert isinstance(body, dict) and body, body
    first = next(iter(body))
    return {("renamed_" + k if k == first else k): v for k, v in body.items()}


def misnamed_inside(body: dict[str, Any]) -> dict[str, Any]:
    """An object keyed by ids (agreements, organisations) with a field of its first entry renamed: a new
    key there is a new entry, not a misnamed field."""
    first = next(iter(body))
    return {**body, first: misnamed(body[first])}


# Answers the test above checks, and the one no test agreement gives: a GLM session sent to a steward.
CHECKED_ABOVE = {
    ("post", "/v1/queries", "200"),
    ("post", "/v1/queries", "202"),
    ("get", "/v1/queries/{request_id}", "200"),
    ("post", "/v1/glm/sessions", "202"),
}
GLM_MODEL = {"outcome": "bmi", "family": "gaussian", "numeric": ["hba1c"]}


def test_every_answer_fits_its_documented_schema_and_a_misnamed_field_does_not(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any], site: Site
) -> None:
    """One real answer of each endpoint, checked against the page the gateway serves."""
    researcher = bearer(idp, "researcher", sub="schema-bodies")
    steward = bearer(idp, "steward", sub="schema-steward")
    auditor = bearer(idp, "auditor")
    answers: list[tuple[str, str, str, httpx.Response]] = []

    def answer(method: str, template: str, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
        response = http.request(method, url, headers=headers, timeout=60, **kwargs)
        answers.append((method.lower(), template, url, response))
        assert response.is_success, f"{method} {template}: {response.status_code} {response.text}"
        return response.json()

    answer("GET", "/v1/steward/datasets", "/v1/steward/datasets", steward)
    listing = answer("GET", "/v1/steward/policy-data", "/v1/steward/policy-data", steward)
    assert len(listing["documents"]) == 6
    for name in listing["documents"]:
        answer("GET", "/v1/steward/policy-data/{name}", f"/v1/steward/policy-data/{name}", steward)
    agreements = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
    # The same document again: the running policy does not change.
    replaced = "/v1/steward/policy-data/agreements"
    answer("PUT", "/v1/steward/policy-data/{name}", replaced, steward, json=agreements)

    summary = {**QUERY, "agreement": "DSA-TEST-APPROVAL", "kind": "summary"}
    for column in ("bmi", "hba1c"):
        queued = http.post("/v1/queries", json={**summary, "params": {"column": column}}, headers=researcher)
        assert queued.status_code == 202, queued.text
    queue = answer("GET", "/v1/steward/approvals", "/v1/steward/approvals", steward)
    mine = [q["request_id"] for q in queue if q["requester"]["sub"] == "schema-bodies"]
    for request_id, approve in zip(mine, (True, False), strict=True):
        answer("POST", "/v1/steward/approvals/{request_id}", f"/v1/steward/approvals/{request_id}", steward,
               json={"approve": approve, "reason": "schema check"})  # fmt: skip
    answer("GET", "/v1/steward/activity", "/v1/steward/activity", steward)
    answer("GET", "/v1/steward/expiring", "/v1/steward/expiring", steward)

    page = answer("GET", "/v1/audit/entries", "/v1/audit/entries", auditor, params={"start": 0, "end": 3})
    size = page["size"]
    answer("GET", "/v1/audit/proofs/inclusion", "/v1/audit/proofs/inclusion", auditor,
           params={"index": 1, "size": size})  # fmt: skip
    answer("GET", "/v1/audit/proofs/consistency", "/v1/audit/proofs/consistency", auditor,
           params={"old": 2, "new": size})  # fmt: skip

    own = [site.settings.site_id]
    pooled = answer("POST", "/v1/federated-queries", "/v1/federated-queries", researcher,
                    json={**QUERY, "kind": "crosstab", "group_by": ["sex"], "sites": own})  # fmt: skip
    assert pooled["status"] == "released" and pooled["rows"]
    expired = {**QUERY, "agreement": "DSA-TEST-EXPIRED", "sites": own}
    nothing = answer("POST", "/v1/federated-queries", "/v1/federated-queries", researcher, json=expired)
    assert nothing["status"] == "no_site_answered" and set(nothing["disclosure"]) == {"reasons"}

    glm = {key: QUERY[key] for key in ("dataset", "agreement", "purpose")} | {"model": GLM_MODEL}
    session = answer("POST", "/v1/glm/sessions", "/v1/glm/sessions", researcher, json=glm)["session"]
    answer("POST", "/v1/glm/sessions/{session_id}/iterations", f"/v1/glm/sessions/{session}/iterations",
           researcher, json={"agreement": QUERY["agreement"], "beta": [0.0, 0.0]})  # fmt: skip
    answer("DELETE", "/v1/glm/sessions/{session_id}", f"/v1/glm/sessions/{session}", researcher)
    fit = answer("POST", "/v1/federated-glm", "/v1/federated-glm", researcher, json={**glm, "sites": own})
    stopped = answer("POST", "/v1/federated-glm", "/v1/federated-glm", researcher,
                     json={**glm, "agreement": "DSA-TEST-EXPIRED", "sites": own})  # fmt: skip
    assert fit["converged"] and stopped["status"] == "stopped"

    answer("POST", "/v1/witness/submissions", "/v1/witness/submissions", steward)
    # Last: a withdrawal (of no patient of the cohort) would refuse collecting an answer approved before it.
    answer("POST", "/v1/steward/datasets/{dataset}/withdrawals", "/v1/steward/datasets/cohort/withdrawals",
           steward, json={"patients": ["schema-check-not-a-patient"]})  # fmt: skip

    components = openapi["components"]["schemas"]
    keyed_by_id = {"/v1/steward/policy-data/agreements", "/v1/steward/policy-data/organisations"}
    for method, template, url, response in answers:
        status = str(response.status_code)
        schema = documented_schema(openapi, template, method, status)
        body = response.json()
        assert violations(body, schema, components) == [], f"{method.upper()} {template} {status}"
        wrong = misnamed_inside(body) if method == "get" and url in keyed_by_id else misnamed(body)
        assert violations(wrong, schema, components), f"{method.upper()} {template}: a misnamed field passes"
    checked = {(method, template, str(response.status_code)) for method, template, _, response in answers}
    assert set(json_answers(openapi)) - CHECKED_ABOVE == checked


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


def references(node: Any, at: str = "#") -> list[tuple[str, str]]:
    """Every reference in a part of the page, as (where, reference): each `$ref` and each schema a
    discriminator's mapping names."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.append((at, node["$ref"]))
        discriminator = node.get("discriminator")
        if isinstance(discriminator, dict) and "propertyName" in discriminator:
            mapping = discriminator.get("mapping", {})
            found += [(f"{at}/discriminator/mapping/{key}", ref) for key, ref in mapping.items()]
        for key, value in node.items():
            found += references(value, f"{at}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += references(value, f"{at}/{i}")
    return found


def resolves(doc: dict[str, Any], ref: str) -> bool:
    """Whether a reference within the page (a JSON pointer after `#`) names a part of it."""
    if not ref.startswith("#/"):
        return False
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def test_every_reference_in_the_page_resolves(openapi: dict[str, Any]) -> None:
    found = references(openapi)
    assert len(found) >= 100
    dangling = [f"{at}: {ref}" for at, ref in found if not resolves(openapi, ref)]
    assert not dangling, "\n".join(dangling)


FEDERATED_PATH = "/v1/federated-queries"
# One spec of each kind the coordinator pools, as a researcher sends it.
POOLED_SPECS: dict[str, dict[str, Any]] = {
    "count": QUERY,
    "crosstab": {**QUERY, "kind": "crosstab", "group_by": ["sex"]},
    "summary": {**QUERY, "kind": "summary", "params": {"column": "bmi"}},
    "histogram": {**QUERY, "kind": "histogram", "params": {"column": "bmi", "edges": [20.0, 30.0]}},
    "quantiles": {**QUERY, "kind": "quantiles", "params": {"column": "bmi", "probs": [0.25, 0.5]}},
    "kaplan_meier": {
        **QUERY,
        "kind": "kaplan_meier",
        "params": {"time": "survival_days", "event": "event", "edges": [30.0, 365.0]},
    },
}
FEDERATION_OPTIONS: list[dict[str, Any]] = [
    {},
    {"sites": ["site-de"]},
    {"timeout_s": MIN_TIMEOUT_S},
    {"sites": ["site-de", "site-fr"], "timeout_s": 30},
    {"sites": None, "timeout_s": MAX_TIMEOUT_S},
]


def federated_body_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    request = openapi["paths"][FEDERATED_PATH]["post"]["requestBody"]
    assert request["required"] is True
    assert list(request["content"]) == ["application/json"]
    schema: dict[str, Any] = request["content"]["application/json"]["schema"]
    return schema


def test_the_pooled_kinds_are_the_kinds_of_federated_bodies_checked() -> None:
    assert set(POOLED_SPECS) == set(POOLED_KINDS)


@pytest.mark.parametrize("kind", POOLED_KINDS)
def test_a_federated_body_the_coordinator_takes_fits_the_documented_schema(
    openapi: dict[str, Any], kind: str
) -> None:
    schema = federated_body_schema(openapi)
    components = openapi["components"]["schemas"]
    for options in FEDERATION_OPTIONS:
        body = {**POOLED_SPECS[kind], **options}
        spec, _, _ = parse_federated(body)
        assert spec.kind == kind
        assert violations(body, schema, components) == [], options


REFUSED_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "no kind": ({key: value for key, value in QUERY.items() if key != "kind"}, "kind"),
    "timeout_s as text": ({**QUERY, "timeout_s": "5"}, "timeout_s"),
    "timeout_s as a boolean": ({**QUERY, "timeout_s": True}, "timeout_s"),
    "timeout_s too long": ({**QUERY, "timeout_s": MAX_TIMEOUT_S + 1}, "timeout_s"),
    "no site": ({**QUERY, "sites": []}, "sites"),
    "a site twice": ({**QUERY, "sites": ["site-de", "site-de"]}, "sites"),
    "a site not named by text": ({**QUERY, "sites": [1]}, "sites"),
    "an unknown field": ({**QUERY, "site": ["site-de"]}, "site"),
}


@pytest.mark.parametrize("case", REFUSED_BODIES)
def test_a_federated_body_the_coordinator_refuses_breaks_the_documented_schema(
    openapi: dict[str, Any], case: str
) -> None:
    body, field = REFUSED_BODIES[case]
    with pytest.raises(Refusal) as refused:
        parse_federated(body)
    assert refused.value.field == field
    assert violations(body, federated_body_schema(openapi), openapi["components"]["schemas"])


def test_the_federated_body_documents_the_spec_of_each_pooled_kind_with_its_sites_and_timeout(
    openapi: dict[str, Any],
) -> None:
    components = openapi["components"]["schemas"]
    schema = federated_body_schema(openapi)
    assert schema["discriminator"]["propertyName"] == "kind"
    federated = schema["discriminator"]["mapping"]
    assert list(federated) == list(POOLED_KINDS)
    assert [choice["$ref"] for choice in schema["oneOf"]] == list(federated.values())
    single_site = openapi["paths"]["/v1/queries"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["discriminator"]["mapping"]  # fmt: skip
    for kind, ref in federated.items():
        body = components[ref.rsplit("/", 1)[1]]
        spec = components[single_site[kind].rsplit("/", 1)[1]]
        properties = dict(body["properties"])
        sites, timeout = properties.pop("sites"), properties.pop("timeout_s")
        # The spec's own fields, as POST /v1/queries takes them, and no other.
        assert properties == spec["properties"], kind
        assert body["required"] == spec["required"] and body["additionalProperties"] is False, kind
        (listed,) = [choice for choice in sites["anyOf"] if choice["type"] == "array"]
        assert listed["items"] == {"type": "string"}
        assert (listed["minItems"], listed["uniqueItems"]) == (1, True)
        assert "site ids" in sites["description"] and "default" in sites["description"]
        assert timeout["type"] == "number"
        assert (timeout["minimum"], timeout["maximum"]) == (MIN_TIMEOUT_S, MAX_TIMEOUT_S)
        assert timeout["default"] == DEFAULT_TIMEOUT_S and "seconds" in timeout["description"]


# -- What a request can be refused before its route runs ----------------------------------------------------

# A slow request, a long head, a full worker (gateway/cli/http_limits.py).
BEFORE_ANY_ROUTE = {"408", "431", "503"}


def test_every_operation_documents_the_refusals_before_its_route(openapi: dict[str, Any]) -> None:
    taking_a_body = 0
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            expected = BEFORE_ANY_ROUTE | ({"413"} if "requestBody" in op else set())
            taking_a_body += "requestBody" in op
            missing = expected - set(responses)
            assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
            for status in expected:
                content = responses[status]["content"]
                assert list(content) == [PROBLEM_JSON], f"{method.upper()} {path} {status}"
            assert "max_connections" in responses["503"]["description"], f"{method.upper()} {path}"
    assert taking_a_body >= 9


def test_a_body_too_large_is_refused_as_documented(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any]
) -> None:
    too_large = b"[" + b"1," * 2_200_000 + b"1]"
    response = http.post("/v1/queries", content=too_large, headers={**bearer(idp, "researcher"),
                         "content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    documented = openapi["paths"]["/v1/queries"]["post"]["responses"]["413"]["content"]
    assert violations(response.json(), documented[PROBLEM_JSON]["schema"], {}) == []


# -- /v1/federated-glm takes what its schema says -----------------------------------------------------------

GLM_BODY = {key: QUERY[key] for key in ("dataset", "agreement", "purpose")} | {"model": GLM_MODEL}


@pytest.mark.parametrize("iterations", ["3", True, 2.5, 0, "x"])
def test_a_glm_cap_the_schema_refuses_is_refused_naming_it(
    http: httpx.Client, idp: LoopbackTestIssuer, openapi: dict[str, Any], iterations: Any
) -> None:
    body = {**GLM_BODY, "max_iterations": iterations}
    schema = openapi["paths"]["/v1/federated-glm"]["post"]["requestBody"]["content"]["application/json"]
    assert violations(body, schema["schema"], openapi["components"]["schemas"])
    response = http.post("/v1/federated-glm", json=body, headers=bearer(idp, "researcher"))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "max_iterations"


def test_a_glm_cap_the_schema_takes_is_taken() -> None:
    from gateway.routes.glm import FederatedGlmRequest

    for iterations in (3, 3.0):  # a JSON integer may be written with a zero fraction
        body = {**GLM_BODY, "max_iterations": iterations}
        assert FederatedGlmRequest.model_validate(body).max_iterations == 3


# -- /docs -------------------------------------------------------------------------------------------------

_PINNED_ASSET = re.compile(r"^https://cdn\.jsdelivr\.net/npm/swagger-ui-dist@\d+\.\d+\.\d+/[\w.-]+$")


class _Page(HTMLParser):
    """The tags of a page that load something, and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag in ("script", "link", "img", "iframe") and (named.get("src") or named.get("href")):
            self.loads.append((tag, named))
        self._in_inline_script = tag == "script" and not named.get("src")
        if self._in_inline_script:
            self.inline.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline[-1] += data


def test_the_docs_page_runs_only_pinned_assets_held_to_their_hashes(http: httpx.Client) -> None:
    response = http.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = _Page()
    page.feed(response.text)
    remote = [(tag, attrs) for tag, attrs in page.loads if (attrs.get("src") or attrs.get("href") or "")
              .startswith(("http:", "https:", "//"))]  # fmt: skip
    assert {tag for tag, _ in remote} == {"script", "link"}
    for tag, attrs in remote:
        url = attrs.get("src") or attrs.get("href") or ""
        assert _PINNED_ASSET.match(url), url
        assert re.fullmatch(r"sha384-[A-Za-z0-9+/]{64}", attrs.get("integrity") or ""), (tag, url)
        assert attrs.get("crossorigin") == "anonymous", (tag, url)
    # Nothing else is fetched from elsewhere: not a favicon, a font or a validator badge.
    icons = [attrs for tag, attrs in page.loads if tag == "link" and "icon" in (attrs.get("rel") or "")]
    assert [icon.get("href") for icon in icons] == ["data:,"]
    assert len(re.findall(r"https?://", response.text)) == len(remote)

    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in response.headers["content-security-policy"].split(";")
    }
    release = {(attrs.get("src") or attrs.get("href") or "").rsplit("/", 1)[0] + "/" for _, attrs in remote}
    assert len(release) == 1  # one release of swagger-ui-dist
    digests = [base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() for script in page.inline]
    inline = {f"'sha256-{digest}'" for digest in digests}
    assert policy["default-src"] == ["'none'"]
    assert set(policy["script-src"]) == release | inline and len(page.inline) == 1
    assert policy["style-src"] == list(release)
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
def test_no_other_page_loads_scripts(http: httpx.Client, path: str) -> None:
    assert http.get(path).status_code == 404
