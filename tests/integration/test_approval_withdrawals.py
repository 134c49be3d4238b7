"""An approved answer leaves only if no withdrawal of its dataset was recorded after its run read them,
whatever time the withdrawal's writer stamped: the answer keeps, at the site, how many withdrawals its run
applied, and a collect compares counts, not clocks. On SQLite and PostgreSQL state databases."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from gateway_site import Site, bearer, running_gateway
from oidc_issuer import LoopbackTestIssuer
from test_approval_collect_scope import _approved, _n, kept_without

from gateway.pipeline import COMPUTED_UNDER, WITHDRAWALS_APPLIED
from gateway.settings import SiteSettings
from gateway.state import GatewayState

WITHDREW = "patients of the dataset withdrew consent since this answer was computed"
STAMP = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_site: Site) -> SiteSettings:
    if request.param == "sqlite":
        return tmp_site.settings
    return tmp_site.settings.model_copy(update={"state_url": request.getfixturevalue("pg_url")})


def _stored_answer(settings: SiteSettings, request_id: str) -> dict[str, Any]:
    state = GatewayState(settings.state_url)
    try:
        stored = state.get_request(request_id)
    finally:
        state.close()
    assert stored is not None and stored.result is not None
    return stored.result


def _withdraw_a_counted_patient(http: httpx.Client, idp: LoopbackTestIssuer, site: Site) -> None:
    """A steward records the withdrawal of a patient the approved summary of bmi counts."""
    source = site.source
    counted = pc.and_(
        pc.and_(pc.equal(source["consent_duo"], "DUO:0000006"), pc.invert(source["consent_withdrawn"])),
        pc.is_valid(source["bmi"]),
    )
    patient = source.filter(counted)["patient_id"][0].as_py()
    done = http.post("/v1/steward/datasets/cohort/withdrawals", json={"patients": [patient]},
                     headers=bearer(idp, "steward", sub="steward-withdrawals"))  # fmt: skip
    assert done.status_code == 200 and done.json()["new"] == 1, done.text


def _refused_as_withdrawn(answer: httpx.Response) -> None:
    assert answer.status_code == 403, answer.text
    assert "rows" not in answer.json() and WITHDREW in answer.json()["reasons"]


def test_a_withdrawal_stamped_before_the_run_but_recorded_after_it_holds_the_answer_back(
    tmp_site: Site, settings: SiteSettings, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    researcher = bearer(idp, "researcher", sub="late-withdrawal")
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        request_id = _approved(http, idp, researcher)
        stored = _stored_answer(settings, request_id)
        assert stored[WITHDRAWALS_APPLIED] == 0
        # As a withdrawal that read the clock, then waited for the writers' lock while the run read the
        # withdrawals and computed its answer: recorded after the run, stamped before the answer's time.
        earlier = (datetime.strptime(stored["computed_at"], STAMP) - timedelta(seconds=1)).strftime(STAMP)
        with monkeypatch.context() as clock:
            clock.setattr("gateway.state.utc_now_text", lambda ago_s=0.0: earlier)
            _withdraw_a_counted_patient(http, idp, tmp_site)
        _refused_as_withdrawn(http.get(f"/v1/queries/{request_id}", headers=researcher))
    engine = sa.create_engine(settings.state_url)
    try:
        with engine.connect() as conn:
            stamped = conn.execute(sa.text("select at from withdrawals")).scalars().all()
    finally:
        engine.dispose()
    assert stamped == [earlier]


def test_a_withdrawal_the_run_applied_does_not_hold_the_answer_back_whatever_its_time(
    tmp_site: Site, settings: SiteSettings, idp: LoopbackTestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    researcher = bearer(idp, "researcher", sub="early-withdrawal")
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        # Recorded by a writer whose clock runs ahead of the one that computes the answer.
        with monkeypatch.context() as clock:
            clock.setattr("gateway.state.utc_now_text", lambda ago_s=0.0: "2999-01-01T00:00:00Z")
            _withdraw_a_counted_patient(http, idp, tmp_site)
        request_id = _approved(http, idp, researcher)
        assert _stored_answer(settings, request_id)[WITHDRAWALS_APPLIED] == 1
        collected = http.get(f"/v1/queries/{request_id}", headers=researcher)
    assert _n(collected) > 0
    assert WITHDRAWALS_APPLIED not in collected.json() and COMPUTED_UNDER not in collected.json()


def test_an_answer_kept_without_its_withdrawal_count_is_refused(
    settings: SiteSettings, idp: LoopbackTestIssuer
) -> None:
    researcher = bearer(idp, "researcher", sub="earlier-answer")
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        request_id = _approved(http, idp, researcher)
        # Kept without how many withdrawals its run applied: whether it misses one cannot be told.
        kept_without(settings.state_url, request_id, WITHDRAWALS_APPLIED)
        _refused_as_withdrawn(http.get(f"/v1/queries/{request_id}", headers=researcher))
