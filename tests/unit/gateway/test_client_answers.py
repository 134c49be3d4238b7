"""How the clients read what comes back, over a stand-in transport: a body that is not the gateway's answer
is a GatewayError naming what was wrong, each site's entry keeps all its members, a fit that did not
converge warns, and every exception survives pickling (a process pool) with its attributes."""

from __future__ import annotations

import copy
import json
import pickle
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.client import (
    ApprovalPending,
    ApprovalRejected,
    ConvergenceWarning,
    Federation,
    Gateway,
    GatewayError,
    GatewayUnavailable,
    QueryDenied,
)
from gateway.client_federation import SITE_COLUMNS, GlmStopped
from gateway.federation.glm_fit import GlmFit

PURPOSE = "DUO:0000006"
TOKEN = "eyJ0eXAi.SECRET-token-value.sig"
UNEXPECTED = "Unexpected answer from the gateway"
MORATORIUM = "publication_moratorium_until"


def answering(status: int, body: Any = None, content: bytes | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


def site_answer(status: int, body: Any = None, content: bytes | None = None) -> Any:
    with Gateway("https://fedgate.example", TOKEN, transport=answering(status, body, content)) as site:
        return site.count("cohort", "DSA-TEST-OPEN", PURPOSE)


def federated_answer(body: Any) -> Any:
    with Federation("https://fedgate.example", TOKEN, transport=answering(200, body)) as federation:
        return federation.count("cohort", "DSA-TEST-OPEN", PURPOSE)


def fit(**changes: Any) -> dict[str, Any]:
    """A coordinator's GLM answer, as `GlmFit.to_dict` writes it."""
    body = GlmFit(
        names=["(Intercept)", "bmi"], family="binomial", coefficients=np.array([0.5, -0.1]),
        covariance=np.array([[0.04, 0.001], [0.001, 0.0009]]), scale=1.0, deviance=120.0,
        pearson_chi2=118.0, nobs=200, iterations=25, converged=True,
        sites=[{"site": "site-de", "status": "answered", "reasons": [], "iteration": 25, "rows": 200}],
    ).to_dict()  # fmt: skip
    answer: dict[str, Any] = json.loads(json.dumps({**body, **changes}))
    return answer


def glm_answer(body: Any) -> GlmFit:
    with Federation("https://fedgate.example", TOKEN, transport=answering(200, body)) as federation:
        return federation.glm("cohort", "DSA-TEST-OPEN", PURPOSE, "event", "binomial", numeric=["bmi"])


COUNT = {"request_id": "r1", "status": "released", "kind": "count", "columns": ["count"], "rows": []}
ANSWERED = {"site": "site-de", "status": "answered", "reasons": [], "request_id": "q1", "duration_ms": 12.5}
POOLED = {"min_cell_count": 10, "suppressed": 0, "reasons": []}
FEDERATED = {**COUNT, "covered": ["site-de"], "disclosure": POOLED, "sites": [ANSWERED]}

# -- answers that are not the gateway's -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "body", "named"),
    [
        (site_answer, 202, {"status": "pending_approval"}, "`request_id` is missing"),
        (site_answer, 202, {"request_id": "r1", "reasons": "needs a steward"}, "`reasons` is a string"),
        (site_answer, 202, {"request_id": "../x"}, "`request_id` is not a request id"),
        (site_answer, 200, {"rows": 5}, "`rows` is a number"),
        (site_answer, 200, {"columns": 3, "rows": []}, "`columns` is a number"),
        (site_answer, 200, {"columns": ["count"], "rows": [[1]]}, "`rows` is a list, not a list of objects"),
        (site_answer, 200, {**COUNT, "disclosure": [1, 2]}, "`disclosure` is a list"),
        (site_answer, 200, {**COUNT, "policy": {MORATORIUM: "soon"}}, f"`policy.{MORATORIUM}` is a string"),
        (site_answer, 200, {**COUNT, "rows": [{"count": 12.5}]}, "column 'count'"),
        (site_answer, 200, b"[" * 100_000 + b"]" * 100_000, "not readable JSON"),
        (federated_answer, 200, {**FEDERATED, "sites": ["site-de"]}, "`sites` is a list, not a list of"),
        (federated_answer, 200, {**FEDERATED, "sites": [{"status": "ok"}]}, "`sites[0].site` is missing"),
        (federated_answer, 200, {**FEDERATED, "covered": "site-de"}, "`covered` is a string"),
        (glm_answer, 200, {}, "`parameters` is missing"),
        (glm_answer, 200, fit(coefficients=[0.5]), "one entry per parameter"),
        (glm_answer, 200, fit(converged="no"), "`converged` is a string"),
        (glm_answer, 200, {"status": "stopped", "iteration": "x"}, "`iteration` is a string"),
        (glm_answer, 200, {"status": "stopped", "iteration": 2, "sites": "x"}, "`sites` is a string"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_a_gateway_error_naming_what_is_wrong(
    call: Callable[..., Any], status: int, body: Any, named: str
) -> None:
    with pytest.raises(GatewayError) as failed:
        if isinstance(body, bytes):
            call(status, content=body)
        elif call is site_answer:
            call(status, body)
        else:
            call(body)
    assert type(failed.value) is GatewayError and failed.value.status == status
    assert str(failed.value).startswith(UNEXPECTED) and named in str(failed.value)
    assert TOKEN not in str(failed.value)


def test_a_request_state_of_the_wrong_shape_is_a_gateway_error() -> None:
    stateless = answering(200, {"reasons": []})
    with (
        Gateway("https://fedgate.example", TOKEN, transport=stateless) as site,
        pytest.raises(GatewayError) as e,
    ):
        site.wait("r1", timeout=0)
    assert "`status` is missing" in str(e.value)
    released = answering(200, {"status": "released", "request_id": "r1"})
    with (
        Gateway("https://fedgate.example", TOKEN, transport=released) as site,
        pytest.raises(GatewayError) as e,
    ):
        site.result("r1")
    assert "`rows` is missing" in str(e.value)


def test_a_refusal_giving_one_reason_as_a_string_keeps_it_whole() -> None:
    with pytest.raises(QueryDenied) as denied:
        site_answer(403, {"title": "Denied by policy", "reasons": "DSA-X expired", "field": ["a"]})
    assert denied.value.reasons == ["DSA-X expired"] and denied.value.field is None


# -- federated answers ------------------------------------------------------------------------------------


def test_each_sites_moratorium_and_other_members_are_kept() -> None:
    sites = [
        {**ANSWERED, MORATORIUM: "2027-01-31"},
        {"site": "site-fr", "status": "answered", "reasons": [], "request_id": "q2", "duration_ms": 9.0,
         "rows_scanned": 400},
    ]  # fmt: skip
    result = federated_answer({**FEDERATED, "sites": sites, "publication_moratorium_until": "2027-01-31"})
    assert list(result.sites.columns) == [*SITE_COLUMNS, "rows_scanned"]
    assert result.sites["publication_moratorium_until"].tolist() == ["2027-01-31", None]
    assert result.frame.attrs == {"publication_moratorium_until": "2027-01-31"}
    assert result.status == "released"
    assert list(federated_answer({**FEDERATED, "sites": []}).sites.columns) == SITE_COLUMNS


def test_no_site_answering_is_an_empty_result_saying_so() -> None:
    refused = {"site": "site-de", "status": "denied", "reasons": ["agreement expired"], "request_id": None,
               "duration_ms": 3.0}  # fmt: skip
    body = {**FEDERATED, "status": "no_site_answered", "columns": [], "covered": [],
            "disclosure": {"reasons": ["no site answered"]}, "sites": [refused]}  # fmt: skip
    result = federated_answer(body)
    assert result.status == "no_site_answered" and result.frame.empty and result.covered == []
    assert result.sites["reasons"].tolist() == [["agreement expired"]]


# -- GLM convergence --------------------------------------------------------------------------------------


def test_a_fit_that_did_not_converge_warns_and_its_summary_says_so() -> None:
    with pytest.warns(ConvergenceWarning, match="did not converge in 25 iterations"):
        stalled = glm_answer(fit(converged=False, status="not_converged"))
    assert issubclass(ConvergenceWarning, UserWarning)
    assert stalled.converged is False
    summary = stalled.summary()
    assert summary.attrs["converged"] is False and "not converged" in summary.attrs["note"]


def test_a_converged_fit_does_not_warn_and_carries_its_moratorium() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converged = glm_answer(fit(publication_moratorium_until="2027-03-01"))
    assert converged.publication_moratorium_until == "2027-03-01"
    assert converged.summary().attrs == {"converged": True}


# -- exceptions cross processes whole ---------------------------------------------------------------------


EXCEPTIONS = [
    QueryDenied(403, {"title": "Denied", "status": 403, "reasons": ["clause 3"], "request_id": "r9"}),
    GatewayUnavailable(0, {"title": "Gateway unreachable", "detail": "connection refused by x"}),
    ApprovalPending("r1", ["needs a steward"]),
    ApprovalRejected("r1", "rejected", ["out of scope"]),
    GlmStopped({"status": "stopped", "iteration": 3, "reasons": ["site-de (denied): expired"],
                "sites": [{"site": "site-de", "status": "denied", "reasons": ["expired"], "iteration": 3}]}),
]  # fmt: skip


def attributes(exc: Exception) -> dict[str, Any]:
    return {k: (v.to_dict("records") if hasattr(v, "to_dict") else v) for k, v in vars(exc).items()}


@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_every_client_exception_pickles_and_copies_with_its_attributes(exc: Exception) -> None:
    for again in (pickle.loads(pickle.dumps(exc)), copy.deepcopy(exc), copy.copy(exc)):  # noqa: S301
        assert type(again) is type(exc) and str(again) == str(exc) and again.args == exc.args
        assert attributes(again) == attributes(exc)


def ask_a_denying_gateway() -> None:
    denied = {"title": "Denied by policy", "status": 403, "reasons": ["DSA-X expired on 2026-06-30"]}
    with Gateway("https://fedgate.example", TOKEN, transport=answering(403, denied)) as site:
        site.count("cohort", "DSA-X", PURPOSE)


def test_a_denial_in_a_process_pool_reaches_the_caller_with_its_reasons() -> None:
    with ProcessPoolExecutor(1) as pool, pytest.raises(QueryDenied) as denied:
        pool.submit(ask_a_denying_gateway).result(timeout=60)
    assert denied.value.reasons == ["DSA-X expired on 2026-06-30"] and denied.value.status == 403
