"""What the clients send and how they read what comes back, over a stand-in transport: request ids, redirects
and other answers that are not problems, validation errors, group_by, and the waiting arguments."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.client import Federation, Gateway, GatewayError, NotFound, QueryInvalid

PURPOSE = "DUO:0000006"
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A transport that answers every request with `answer` and keeps what was asked."""

    def __init__(self, answer: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def specs(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def released(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"request_id": "r1", "status": "released", "kind": "count",
                                     "columns": [], "rows": [], "covered": [], "sites": []})  # fmt: skip


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(released)


@pytest.fixture
def site(recorder: Recorder) -> Iterator[Gateway]:
    with Gateway("https://gateway.test", "token", transport=recorder.transport) as client:
        yield client


@pytest.fixture
def federation(recorder: Recorder) -> Iterator[Federation]:
    with Federation("https://gateway.test", "token", transport=recorder.transport) as client:
        yield client


# -- request ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["", "   ", "a/b", ".", "..", "abc\n", " abc"])
def test_an_empty_or_malformed_request_id_is_refused_before_any_request(
    site: Gateway, recorder: Recorder, request_id: str
) -> None:
    with pytest.raises(ValueError, match="request id"):
        site.result(request_id)
    with pytest.raises(ValueError, match="request id"):
        site.wait(request_id, timeout=1)
    assert recorder.requests == []


def test_a_request_id_is_sent_as_one_quoted_path_segment(site: Gateway, recorder: Recorder) -> None:
    recorder.answer = lambda request: httpx.Response(
        200, json={"request_id": "x", "status": "pending_approval"}
    )
    site.result("x?y=1#z")
    site.result("0f3c%20ü")
    paths = [r.url.raw_path for r in recorder.requests]
    assert paths == [b"/v1/queries/x%3Fy%3D1%23z", b"/v1/queries/0f3c%2520%C3%BC"]


# -- answers that are not a released body ------------------------------------------------------------------


def test_a_redirect_is_a_gateway_error_with_its_status(site: Gateway, recorder: Recorder) -> None:
    recorder.answer = lambda request: httpx.Response(307, headers={"Location": "http://gateway.test/v1/"})
    with pytest.raises(GatewayError) as redirected:
        site.result("abc")
    assert redirected.value.status == 307 and "http://gateway.test/v1/" in str(redirected.value)
    with pytest.raises(GatewayError) as on_submit:
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert on_submit.value.status == 307


@pytest.mark.parametrize(
    ("status", "content", "kind"),
    [
        (502, b"<html>Bad Gateway</html>", GatewayError),
        (404, b"[1, 2]", NotFound),
        (418, b'"teapot"', GatewayError),
        (200, b"<html>a login page</html>", GatewayError),
        (200, b"[]", GatewayError),
    ],
    ids=["html-error", "json-list-error", "json-text-error", "html-ok", "json-list-ok"],
)
def test_an_answer_that_is_no_json_object_is_a_gateway_error_with_its_status(
    site: Gateway, recorder: Recorder, status: int, content: bytes, kind: type[GatewayError]
) -> None:
    recorder.answer = lambda request: httpx.Response(status, content=content)
    with pytest.raises(kind) as failed:
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert type(failed.value) is kind and failed.value.status == status


def test_validation_errors_become_the_reasons_of_query_invalid(site: Gateway, recorder: Recorder) -> None:
    # The body `gateway.problems` renders for a spec that fails validation: `errors`, no `reasons`.
    errors = [
        {"field": "params.edges", "message": "edges must increase strictly: edges[1] is not above edges[0]"},
        {"field": "group_by", "message": "group_by names a column twice"},
    ]
    problem = {"type": "about:blank", "title": "The request body is not a valid query", "status": 422,
               "detail": "params.edges: edges must increase strictly: edges[1] is not above edges[0]",
               "errors": errors, "field": "params.edges"}  # fmt: skip
    recorder.answer = lambda request: httpx.Response(422, json=problem)
    with pytest.raises(QueryInvalid) as invalid:
        site.histogram("cohort", "DSA-TEST-OPEN", PURPOSE, column="bmi", edges=[30, 20])
    assert invalid.value.reasons == [f"{e['field']}: {e['message']}" for e in errors]
    assert invalid.value.field == "params.edges" and "group_by names a column twice" in str(invalid.value)
    # A problem that gives its reasons keeps them.
    recorder.answer = lambda request: httpx.Response(422, json={**problem, "reasons": ["the policy's own"]})
    with pytest.raises(QueryInvalid) as given:
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE)
    assert given.value.reasons == ["the policy's own"]


# -- group_by ------------------------------------------------------------------------------------------------


def test_a_group_by_given_as_one_name_is_one_column(
    site: Gateway, federation: Federation, recorder: Recorder
) -> None:
    site.crosstab("cohort", "DSA-TEST-OPEN", PURPOSE, group_by="sex")
    site.count("cohort", "DSA-TEST-OPEN", PURPOSE, group_by="sex")
    site.summary("cohort", "DSA-TEST-OPEN", PURPOSE, column="bmi", group_by=("sex", "smoking"))
    federation.crosstab("cohort", "DSA-TEST-OPEN", PURPOSE, group_by="sex")
    assert [spec["group_by"] for spec in recorder.specs()] == [["sex"], ["sex"], ["sex", "smoking"], ["sex"]]


# -- waiting -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["wait", "poll_every"])
def test_federation_refuses_the_waiting_arguments_by_name(
    federation: Federation, recorder: Recorder, argument: str
) -> None:
    with pytest.raises(TypeError, match=f"'{argument}'"):
        federation.count("cohort", "DSA-TEST-OPEN", PURPOSE, **{argument: 5})
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"wait": -1}, "wait"),
        ({"wait": math.nan}, "wait"),
        ({"wait": 1, "poll_every": -1}, "poll_every"),
        ({"wait": 1, "poll_every": 0}, "poll_every"),
        ({"wait": 1, "poll_every": math.inf}, "poll_every"),
        ({"poll_every": -1}, "poll_every"),
    ],
)
def test_wait_and_poll_every_are_checked_before_any_request(
    site: Gateway, recorder: Recorder, arguments: dict[str, float], named: str
) -> None:
    spec = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": [PURPOSE]}, "kind": "count"}
    with pytest.raises(ValueError, match=named):
        site.query(spec, **arguments)
    with pytest.raises(ValueError, match=named):
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE, **arguments)
    timeout = arguments.get("wait", 1)
    with pytest.raises(ValueError, match="timeout" if named == "wait" else named):
        site.wait("abc", timeout=timeout, poll_every=arguments.get("poll_every", 1))
    assert recorder.requests == []


@pytest.mark.parametrize("value", ["5", True, None])
def test_wait_and_poll_every_must_be_numbers(site: Gateway, recorder: Recorder, value: Any) -> None:
    with pytest.raises(TypeError, match="poll_every"):
        site.count("cohort", "DSA-TEST-OPEN", PURPOSE, wait=1, poll_every=value)
    if value is not None:  # wait=None means: do not wait
        with pytest.raises(TypeError, match="wait"):
            site.count("cohort", "DSA-TEST-OPEN", PURPOSE, wait=value)
    assert recorder.requests == []
