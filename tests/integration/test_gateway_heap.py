"""A served gateway tunes its process's garbage collector once started; an app sharing a process does not."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import httpx
import pytest
from gateway_site import Site, bearer, running_gateway, serving
from oidc_issuer import LoopbackTestIssuer

from gateway.app import CONFIG_ENV, YOUNG_COLLECTION_THRESHOLD, app_from_environment

QUERY = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]},
         "kind": "count", "group_by": ["sex"]}  # fmt: skip


@pytest.fixture
def collector() -> Iterator[None]:
    """Give the test process its collector back as it was, whatever the test did to it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_a_served_gateway_freezes_its_start_up_heap_and_collects_young_objects_less_often(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    gc.unfreeze()
    middle, oldest = gc.get_threshold()[1:]
    with running_gateway(tmp_site.settings, settle_heap=True) as url:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, middle, oldest)
        answer = httpx.post(f"{url}/v1/queries", json=QUERY, headers=bearer(idp, "researcher"), timeout=30)
        assert answer.status_code == 200, answer.text
        released = answer.json()
        assert released["status"] == "released"
        assert sum(row["count"] for row in released["rows"] if row["margin"] is None) > 0


@pytest.mark.usefixtures("collector")
def test_an_app_in_a_shared_process_leaves_the_collector_alone(tmp_site: Site) -> None:
    gc.unfreeze()
    threshold = gc.get_threshold()
    with running_gateway(tmp_site.settings) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == threshold


@pytest.mark.usefixtures("collector")
def test_the_served_factory_settles_the_heap(tmp_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    gc.unfreeze()
    monkeypatch.setenv(CONFIG_ENV, str(tmp_site.config))
    with serving(app_from_environment()) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
