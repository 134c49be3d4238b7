"""The Python client's approval polling over real HTTP: pending, waiting out a steward, rejection, timeout.

Each test asks as a researcher of its own (`sub`), so the steward finds that researcher's request in the
queue of the module's shared gateway without mistaking another test's request for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pandas as pd
import pytest
from gateway_site import TEST_AGREEMENTS, bearer
from oidc_issuer import LoopbackTestIssuer

from gateway.client import ApprovalPending, ApprovalRejected, Gateway, NotFound, QueryResult

PURPOSE = "DUO:0000006"
APPROVAL = "DSA-TEST-APPROVAL"
MIN_CELL = TEST_AGREEMENTS[APPROVAL]["thresholds"]["min_cell_count"]
NEEDS_STEWARD = f"{APPROVAL} requires a steward's approval for summary queries"
POLL = 0.05


def summary_spec(column: str, agreement: str = APPROVAL) -> dict[str, Any]:
    return {
        "dataset": "cohort",
        "agreement": agreement,
        "purpose": {"duo": [PURPOSE]},
        "kind": "summary",
        "group_by": ["sex"],
        "params": {"column": column},
    }


@pytest.fixture(scope="module")
def steward(gateway_url: str, idp: LoopbackTestIssuer) -> Iterator[httpx.Client]:
    headers = bearer(idp, "steward", sub="steward-1")
    with httpx.Client(base_url=gateway_url, timeout=30, headers=headers) as client:
        yield client


@pytest.fixture(scope="module")
def in_background() -> Iterator[Callable[..., Future[Any]]]:
    """Run a steward's action on another thread; `.result()` re-raises whatever went wrong there."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool.submit


@pytest.fixture
def client_for(gateway_url: str, idp: LoopbackTestIssuer) -> Iterator[Callable[[str], Gateway]]:
    opened: list[Gateway] = []

    def open_as(sub: str) -> Gateway:
        token = idp.token(sub=sub, org="org-aphp", country="FR", roles=["researcher"])
        opened.append(Gateway(gateway_url, token, timeout=30))
        return opened[-1]

    yield open_as
    for site in opened:
        site.close()


def queued(steward: httpx.Client, sub: str, *, within: float = 10.0) -> dict[str, Any]:
    """The steward's queue entry of `sub`'s one pending request, once it shows up."""
    deadline = time.monotonic() + within
    while True:
        response = steward.get("/v1/steward/approvals")
        assert response.status_code == 200, response.text
        mine = [q for q in response.json() if q["requester"]["sub"] == sub]
        if mine:
            assert len(mine) == 1, mine
            return dict(mine[0])
        assert time.monotonic() < deadline, f"no pending request of {sub} reached the steward"
        time.sleep(POLL)


def decide(
    steward: httpx.Client, sub: str, *, approve: bool, reason: str, after: float = 0.0
) -> dict[str, Any]:
    """Wait `after` seconds, then approve or reject `sub`'s pending request as the steward."""
    time.sleep(after)
    request_id = queued(steward, sub)["request_id"]
    response = steward.post(
        f"/v1/steward/approvals/{request_id}", json={"approve": approve, "reason": reason}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def pending_id(site: Gateway, column: str) -> str:
    with pytest.raises(ApprovalPending) as pending:
        site.query(summary_spec(column))
    return pending.value.request_id


def test_a_summary_needing_a_steward_raises_approval_pending(
    client_for: Callable[[str], Gateway], steward: httpx.Client
) -> None:
    site = client_for("approvals-pending")
    with pytest.raises(ApprovalPending) as pending:
        site.summary("cohort", APPROVAL, PURPOSE, column="hba1c", group_by=["sex"])
    entry = queued(steward, "approvals-pending")
    assert pending.value.request_id == entry["request_id"]
    assert pending.value.reasons == [NEEDS_STEWARD] == entry["reasons"]
    assert entry["kind"] == "summary" and entry["agreement"] == APPROVAL
    state = site.result(pending.value.request_id)
    assert state["status"] == "pending_approval" and "rows" not in state


def test_wait_returns_the_released_summary_once_a_steward_approves(
    client_for: Callable[[str], Gateway], steward: httpx.Client, in_background: Callable[..., Future[Any]]
) -> None:
    site = client_for("approvals-approved")
    request_id = pending_id(site, "bmi")
    approval = in_background(
        decide, steward, "approvals-approved", approve=True, reason="ethics ok", after=0.3
    )
    start = time.monotonic()
    result = site.wait(request_id, timeout=10, poll_every=POLL)
    waited = time.monotonic() - start
    decided = approval.result(timeout=10)
    assert decided["status"] == "released" and waited >= 0.25  # it polled until the steward decided
    assert isinstance(result, QueryResult) and result.request_id == request_id
    assert result.result_hash.startswith("sha256:") and "rows" not in decided  # the steward gets no answer
    frame = result.frame
    assert list(frame.columns[:2]) == ["sex", "n"] and {"sum", "sum_sq"} <= set(frame.columns)
    assert set(frame["sex"]) == {"F", "M"} and (frame["n"] >= MIN_CELL).all()
    mean = frame["sum"] / frame["n"]
    assert ((mean > 15) & (mean < 60)).all()  # BMI
    # The same question under an agreement without a steward gets the same released table.
    direct = site.query(summary_spec("bmi", agreement="DSA-TEST-OPEN")).frame
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), direct.reset_index(drop=True))


def test_wait_raises_approval_rejected_with_the_stewards_reason(
    client_for: Callable[[str], Gateway], steward: httpx.Client, in_background: Callable[..., Future[Any]]
) -> None:
    site = client_for("approvals-rejected")
    request_id = pending_id(site, "systolic_bp")
    reason = "the protocol does not cover blood pressure"
    rejection = in_background(decide, steward, "approvals-rejected", approve=False, reason=reason, after=0.2)
    with pytest.raises(ApprovalRejected) as rejected:
        site.wait(request_id, timeout=10, poll_every=POLL)
    assert rejection.result(timeout=10)["status"] == "rejected"
    assert rejected.value.request_id == request_id and rejected.value.status == "rejected"
    assert any(reason in r for r in rejected.value.reasons), rejected.value.reasons
    assert site.result(request_id)["status"] == "rejected"


@pytest.mark.parametrize("poll_every", [POLL, 5.0], ids=["frequent-polls", "poll-longer-than-timeout"])
def test_wait_gives_up_with_approval_pending_at_its_timeout(
    client_for: Callable[[str], Gateway], poll_every: float
) -> None:
    site = client_for(f"approvals-timeout-{poll_every}")
    request_id = pending_id(site, "hba1c")
    start = time.monotonic()
    with pytest.raises(ApprovalPending) as timed_out:
        site.wait(request_id, timeout=0.5, poll_every=poll_every)
    waited = time.monotonic() - start
    assert 0.5 <= waited < 1.5, waited
    assert timed_out.value.request_id == request_id and timed_out.value.reasons == [NEEDS_STEWARD]
    assert site.result(request_id)["status"] == "pending_approval"  # nobody decided; it stays queued


def test_query_with_wait_submits_and_returns_the_approved_answer(
    client_for: Callable[[str], Gateway], steward: httpx.Client, in_background: Callable[..., Future[Any]]
) -> None:
    site = client_for("approvals-query-wait")
    approval = in_background(decide, steward, "approvals-query-wait", approve=True, reason="ok")
    result = site.query(summary_spec("hba1c"), wait=10, poll_every=POLL)
    decided = approval.result(timeout=10)
    assert decided["status"] == "released" and result.request_id == decided["request_id"]
    assert set(result.frame["sex"]) == {"F", "M"} and (result.frame["n"] >= MIN_CELL).all()
    assert result.raw["rows"] and "rows" not in decided


def test_a_kind_method_with_wait_returns_the_approved_frame(
    client_for: Callable[[str], Gateway], steward: httpx.Client, in_background: Callable[..., Future[Any]]
) -> None:
    site = client_for("approvals-kind-wait")
    approval = in_background(decide, steward, "approvals-kind-wait", approve=True, reason="ok")
    # poll_every is the client's, never part of the spec (which forbids unknown fields: a 422)
    frame = site.summary(
        "cohort", APPROVAL, PURPOSE, column="bmi", group_by=["sex"], wait=10, poll_every=POLL
    )
    decided = approval.result(timeout=10)
    assert isinstance(frame, pd.DataFrame) and decided["status"] == "released"
    assert len(frame) == 2 and "rows" not in decided
    assert set(frame["sex"]) == {"F", "M"} and (frame["n"] >= MIN_CELL).all()


def test_result_of_someone_elses_or_an_unknown_request_is_not_found(
    client_for: Callable[[str], Gateway],
) -> None:
    owner = client_for("approvals-owner")
    request_id = pending_id(owner, "bmi")
    assert owner.result(request_id)["status"] == "pending_approval"
    other = client_for("approvals-someone-else")
    # An id is one path segment, sent whole (tests/unit/gateway/test_client_requests.py checks the path);
    # the gateway does not repeat it.
    for unknown in (request_id, "no-such-request", "x?y=1", "a b#c"):
        with pytest.raises(NotFound) as missing:
            other.result(unknown)
        assert missing.value.status == 404 and unknown not in str(missing.value)
    with pytest.raises(NotFound):
        other.wait(request_id, timeout=1, poll_every=POLL)


def test_no_request_id_is_refused_before_asking(client_for: Callable[[str], Gateway]) -> None:
    site = client_for("approvals-no-id")
    for malformed in ("", " ", "a/b", ".."):
        with pytest.raises(ValueError, match="request id"):
            site.result(malformed)
        with pytest.raises(ValueError, match="request id"):
            site.wait(malformed, timeout=1, poll_every=POLL)


def test_wait_and_poll_every_are_checked_before_the_query_is_submitted(
    client_for: Callable[[str], Gateway], steward: httpx.Client
) -> None:
    site = client_for("approvals-bad-wait")
    with pytest.raises(ValueError, match="poll_every"):
        site.query(summary_spec("bmi"), wait=1, poll_every=-1)
    with pytest.raises(ValueError, match="wait"):
        site.summary("cohort", APPROVAL, PURPOSE, column="bmi", wait=-1)
    queue = steward.get("/v1/steward/approvals").json()
    assert not [q for q in queue if q["requester"]["sub"] == "approvals-bad-wait"]  # nothing was submitted
