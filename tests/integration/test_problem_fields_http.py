"""Validation problems over HTTP name the field as the client wrote it and say which part of the request is
invalid: a query spec's field by its path into the spec (docs/queries.md), another body's field by its
dotted location, a query parameter by its name, and the audit log records the same name."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from gateway_site import audit_size, bearer, entries_since
from oidc_issuer import LoopbackTestIssuer

QUERY = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]}, "kind": "count",
}  # fmt: skip
LEAF = {"column": "bmi", "op": ">", "value": 30}
BAD_LEAF = {"column": "1x", "op": "~", "value": {}}  # three faults: column, op and value


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _fields(problem: dict[str, Any]) -> list[str]:
    return [e["field"] for e in problem["errors"]]


def test_a_filter_value_is_named_by_its_path_in_the_spec(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    body = {**QUERY, "filters": {**LEAF, "value": "x" * 300}}
    start = audit_size(http, idp)
    problem = _problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher")))
    assert problem["title"] == "The request body is not a valid query"
    assert problem["field"] == "filters.value" and _fields(problem) == ["filters.value"]
    assert problem["detail"].startswith("filters.value: ")
    (refused,) = [e for e in entries_since(http, idp, start) if e["type"] == "query.refused"]
    assert refused["payload"]["reasons"][0].startswith("filters.value: ")


def test_a_field_in_a_nested_filter_is_named_with_its_indexes(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    bad = {**LEAF, "op": "~"}
    body = {**QUERY, "filters": {"and": [LEAF, {"or": [LEAF, {"not": bad}]}]}}
    problem = _problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher")))
    assert problem["field"] == "filters.and[1].or[1].not.op"


def test_other_spec_fields_are_named_as_the_spec_names_them(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    def field_of(body: dict[str, Any]) -> str:
        problem = _problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher")))
        assert problem["title"] == "The request body is not a valid query"
        return str(problem["field"])

    assert field_of({**QUERY, "limit": 5}) == "limit"
    histogram = {"column": "bmi", "edges": [20, "thirty"]}
    assert field_of({**QUERY, "kind": "histogram", "params": histogram}) == "params.edges[1]"
    # `time` is a field here, though pydantic also names a union's time member so.
    survival = {"time": "1 day", "event": "event", "edges": [30]}
    assert field_of({**QUERY, "kind": "kaplan_meier", "params": survival}) == "params.time"
    assert field_of({k: v for k, v in QUERY.items() if k != "kind"}) == "kind"
    assert field_of({**QUERY, "kind": "median"}) == "kind"


def test_a_filter_tree_beyond_the_limits_is_refused_at_once_as_one_problem(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    from gateway.problems import MAX_BODY_BYTES

    headers = {"content-type": "application/json", **bearer(idp, "researcher")}
    wide = {"and": [{**LEAF, "op": "~"}] * 10_000}
    huge = {"or": [BAD_LEAF] * 110_000}  # as many faults as the largest body the gateway reads holds
    for path in ("/v1/queries", "/v1/federated-queries"):
        for filters in (wide, huge):
            body = json.dumps({**QUERY, "filters": filters}, separators=(",", ":")).encode()
            assert len(body) < MAX_BODY_BYTES
            start = time.perf_counter()
            answer = http.post(path, content=body, headers=headers)
            assert time.perf_counter() - start < 1.0, path  # it held a worker for seconds
            assert len(answer.content) < 2000, (path, len(answer.content))
            problem = _problem(answer)
            assert problem["field"] == "filters", (path, problem)
            assert "at most 32" in problem["detail"]
            if path == "/v1/queries":  # a federated query's refusal lists no errors
                assert _fields(problem) == ["filters"]


def test_a_422_lists_the_first_errors_found_and_counts_the_rest(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    from gateway.problems import MAX_LISTED_ERRORS, Problem

    start = audit_size(http, idp)
    body = {**QUERY, "filters": {"and": [BAD_LEAF] * 30}}  # within the limits, 90 faults
    problem = _problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher")))
    assert MAX_LISTED_ERRORS == 20 and len(problem["errors"]) == 20 and problem["errors_omitted"] == 70
    assert _fields(problem)[:3] == ["filters.and[0].column", "filters.and[0].op", "filters.and[0].value"]
    assert problem["detail"].endswith(" (and 70 more errors)")
    assert set(problem) <= set(Problem.model_fields)  # documented on the OpenAPI page
    (refused,) = [e for e in entries_since(http, idp, start) if e["type"] == "query.refused"]
    assert len(refused["payload"]["reasons"]) == 20
    # Any body's errors are listed so: unknown fields of a spec, a steward's withdrawal.
    unknown: dict[str, Any] = {**QUERY, **{f"extra_{i}": 0 for i in range(32 - len(QUERY))}}
    answer = http.post("/v1/queries", json=unknown, headers=bearer(idp, "researcher"))
    assert len(answer.content) < 4000 and _problem(answer)["errors_omitted"] == 32 - len(QUERY) - 20
    withdrawal = {"patients": [7] * 25}
    steward = bearer(idp, "steward")
    problem = _problem(http.post("/v1/steward/datasets/cohort/withdrawals", json=withdrawal, headers=steward))
    assert _fields(problem) == [f"patients.{i}" for i in range(20)] and problem["errors_omitted"] == 5
    # Errors up to the limit are all listed, and nothing says more are missing.
    answer = http.post("/v1/queries", json={**QUERY, "filters": BAD_LEAF}, headers=bearer(idp, "researcher"))
    problem = _problem(answer)
    assert len(problem["errors"]) == 3 and "errors_omitted" not in problem


def test_a_body_that_is_not_json_is_named_body(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    headers = {**bearer(idp, "researcher"), "content-type": "application/json"}
    problem = _problem(http.post("/v1/queries", content=b'{"kind": "count",', headers=headers))
    assert problem["field"] == "body"  # not the offset in the text where decoding stopped


def test_a_query_parameter_is_named_by_its_name_in_the_problem_and_the_audit_log(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    start = audit_size(http, idp)
    response = http.get("/v1/steward/activity", params={"hours": "abc"}, headers=bearer(idp, "steward"))
    problem = _problem(response)
    assert problem["title"] == "A query parameter is not valid"
    assert problem["field"] == "hours" and problem["detail"].startswith("hours: ")
    (refused,) = [e for e in entries_since(http, idp, start) if e["type"] == "request.refused"]
    assert refused["payload"]["route"] == "GET:activity" and refused["payload"]["field"] == "hours"


def test_a_steward_body_field_is_named_by_its_location(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    steward = bearer(idp, "steward")
    decision = http.post(
        "/v1/steward/approvals/req-x", json={"approve": "maybe", "reason": "ok"}, headers=steward
    )
    problem = _problem(decision)
    assert problem["title"] == "The request body is not valid"
    assert _fields(problem) == ["approve"]
    withdrawal = {"patients": ["MRN-1", 7]}
    start = audit_size(http, idp)
    problem = _problem(http.post("/v1/steward/datasets/cohort/withdrawals", json=withdrawal, headers=steward))
    assert problem["title"] == "The request body is not valid" and problem["field"] == "patients.1"
    (refused,) = [e for e in entries_since(http, idp, start) if e["type"] == "request.refused"]
    assert refused["payload"]["field"] == "patients.1"


def test_a_value_matching_no_member_of_a_union_is_named_without_the_members(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    # A GLM level is a boolean, an integer or a string: pydantic reports one error per member.
    model = {"outcome": "bmi", "family": "gaussian", "categorical": [{"column": "sex", "levels": ["F", []]}]}
    body = {k: v for k, v in QUERY.items() if k != "kind"} | {"model": model}
    problem = _problem(http.post("/v1/glm/sessions", json=body, headers=bearer(idp, "researcher")))
    assert problem["title"] == "The request body is not valid"
    assert set(_fields(problem)) == {"model.categorical.0.levels.1"}


def test_a_rule_of_the_spec_is_stated_as_written(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    histogram = {"column": "bmi", "edges": [30, 20]}
    body = {**QUERY, "kind": "histogram", "params": histogram}
    problem = _problem(http.post("/v1/queries", json=body, headers=bearer(idp, "researcher")))
    assert problem["field"] == "params.edges"
    assert problem["detail"] == "params.edges: edges must increase strictly: edges[1] is not above edges[0]"


def test_a_body_json_cannot_be_read_into_is_a_422_naming_the_body(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    headers = {"Content-Type": "application/json", **bearer(idp, "researcher")}
    bodies = [
        b'{"dataset": "\xff\xfe"}',  # no UTF-8
        b'{"dataset": "cohort", "limit": ' + b"9" * 5000 + b"}",  # more digits than Python converts
        json.dumps(QUERY).encode().replace(b"{", b"\x1f\x8b{", 1),  # as if compressed
    ]
    for body in bodies:
        start = audit_size(http, idp)
        problem = _problem(http.post("/v1/queries", content=body, headers=headers))
        assert problem["field"] == "body" and problem["title"] == "The request body is not a valid query"
        (refused,) = [e for e in entries_since(http, idp, start) if e["type"] == "query.refused"]
        assert refused["payload"]["reasons"][0].startswith("body: ")


def test_an_integer_beyond_what_the_query_hash_holds_is_a_422(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    for value in (2**53, -(2**53), [1, 2**53]):
        leaf = {"column": "survival_days", "op": "in" if isinstance(value, list) else ">", "value": value}
        problem = _problem(
            http.post("/v1/queries", json={**QUERY, "filters": leaf}, headers=bearer(idp, "researcher"))
        )
        assert problem["field"] == "filters.value"


def test_policy_data_with_an_integer_beyond_2_53_is_a_422_naming_it(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward")
    document = http.get("/v1/steward/policy-data/agreements", headers=steward).json()
    document["DSA-TEST-OPEN"]["thresholds"]["min_cell_count"] = 2**64
    problem = _problem(http.put("/v1/steward/policy-data/agreements", json=document, headers=steward))
    assert problem["field"] == "DSA-TEST-OPEN.thresholds.min_cell_count"


def test_policy_data_that_is_not_an_object_names_the_body(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    steward = bearer(idp, "steward")
    problem = _problem(http.put("/v1/steward/policy-data/agreements", json=[1, 2], headers=steward))
    assert problem["field"] == "body"


def test_a_glm_outcome_that_is_not_numbers_is_a_422_naming_it_and_audited(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    base = {k: v for k, v in QUERY.items() if k not in ("kind", "group_by")}
    for outcome in ("outcome", "admission_date", "icd10"):  # text, a date, text holding codes
        model = {"outcome": outcome, "family": "binomial", "numeric": ["bmi"]}
        start = audit_size(http, idp)
        answer = http.post(
            "/v1/glm/sessions", json=base | {"model": model}, headers=bearer(idp, "researcher")
        )
        problem = _problem(answer)
        assert answer.status_code == 422 and problem["field"] == "model.outcome", problem
        assert "E11" not in answer.text and "recovered" not in answer.text
        types = [e["type"] for e in entries_since(http, idp, start)]
        assert types[-1] == "glm.refused", types


def test_a_glm_column_is_named_where_the_request_names_it(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    base = {k: v for k, v in QUERY.items() if k not in ("kind", "group_by")}
    model = {"outcome": "bmi", "family": "gaussian", "numeric": ["hba1c", "smoking"]}
    problem = _problem(
        http.post("/v1/glm/sessions", json=base | {"model": model}, headers=bearer(idp, "researcher"))
    )
    assert problem["field"] == "model.numeric[1]" and problem["title"] == "Column is not numeric"


def test_a_body_over_the_limit_is_a_413_before_it_is_read(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    from gateway.problems import MAX_BODY_BYTES

    big = b'{"dataset": [' + b"1," * (MAX_BODY_BYTES // 2) + b"1]}"
    start = audit_size(http, idp)
    for headers in ({}, bearer(idp, "researcher")):  # refused before its token is looked at
        answer = http.post(
            "/v1/queries", content=big, headers={"content-type": "application/json", **headers}
        )
        assert answer.status_code == 413 and answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["title"] == "Request body too large"
    refused = [e for e in entries_since(http, idp, start) if e["type"] == "request.refused"]
    assert [e["payload"]["title"] for e in refused] == ["Request body too large"] * 2

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    start = audit_size(http, idp)
    answer = http.post("/v1/queries", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["title"] == "Request body too large"  # one title, however the body came
    refused = [e for e in entries_since(http, idp, start) if e["type"] == "request.refused"]
    assert [e["payload"]["title"] for e in refused] == ["Request body too large"]
    # A body under the limit is read as before.
    assert http.post("/v1/queries", json=QUERY, headers=bearer(idp, "researcher")).status_code == 200


def test_an_agreement_id_the_audit_log_would_not_record_is_a_422_naming_it(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher")
    glm = {"outcome": "bmi", "family": "gaussian", "numeric": ["hba1c"]}
    base = {k: v for k, v in QUERY.items() if k != "kind"}
    for agreement in ("DSA:1234567890123", "a" * 128, "4111111111111111"):
        for path, body in (
            ("/v1/queries", QUERY | {"agreement": agreement}),
            ("/v1/federated-queries", QUERY | {"agreement": agreement}),
            ("/v1/glm/sessions", base | {"agreement": agreement, "model": glm}),
            ("/v1/federated-glm", base | {"agreement": agreement, "model": glm}),
        ):
            problem = _problem(http.post(path, json=body, headers=researcher))
            assert problem["field"] == "agreement", (path, problem)
            assert agreement not in json.dumps(problem)


def test_more_duo_codes_than_the_audit_log_records_is_a_422_naming_them(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    codes = [f"DUO:{i:07d}" for i in range(1, 66)]
    problem = _problem(
        http.post("/v1/queries", json=QUERY | {"purpose": {"duo": codes}}, headers=bearer(idp, "researcher"))
    )
    assert problem["field"] == "purpose.duo"


def test_a_dataset_id_the_audit_log_would_not_record_is_named(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    answer = http.post(
        "/v1/queries", json=QUERY | {"dataset": "cohort1234567"}, headers=bearer(idp, "researcher")
    )
    assert answer.status_code == 422 and answer.json()["field"] == "dataset"


def test_the_frameworks_refusals_say_what_to_do(http: httpx.Client, idp: LoopbackTestIssuer) -> None:
    researcher = bearer(idp, "researcher")
    missing = http.get("/v1/no-such-route", headers=researcher)
    assert missing.status_code == 404 and missing.json()["detail"]
    slash = http.post("/v1/queries/", json=QUERY, headers=researcher)
    assert slash.status_code == 404 and slash.headers["content-type"] == "application/problem+json"
    wrong = http.delete("/v1/queries", headers=researcher)
    assert wrong.status_code == 405 and wrong.json()["detail"] and "POST" in wrong.headers["allow"]
