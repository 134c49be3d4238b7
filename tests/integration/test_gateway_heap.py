"""A served gateway tunes its process's garbage collector and switch interval once started; an app sharing a
process does not."""

from __future__ import annotations

import gc
import sys
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
    """Give the test process its collector and switch interval back as they were, whatever the test did."""
    threshold = gc.get_threshold()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # Python's default, which no test below expects to find set by a gateway
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("collector")
def test_a_served_gateway_freezes_its_start_up_heap_and_collects_young_objects_less_often(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    gc.unfreeze()
    middle, oldest = gc.get_threshold()[1:]
    with running_gateway(tmp_site.settings, tune_process=True) as url:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, middle, oldest)
        assert sys.getswitchinterval() == pytest.approx(0.010)  # [server] switch_interval_ms's default
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
        assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.usefixtures("collector")
def test_the_served_factory_settles_the_heap(tmp_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    gc.unfreeze()
    monkeypatch.setenv(CONFIG_ENV, str(tmp_site.config))
    with serving(app_from_environment()) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
        assert sys.getswitchinterval() == pytest.approx(0.010)


@pytest.mark.usefixtures("collector")
def test_a_served_gateway_takes_its_switch_interval_from_the_config(tmp_site: Site) -> None:
    server = tmp_site.settings.server.model_copy(update={"switch_interval_ms": 25.0})
    settings = tmp_site.settings.model_copy(update={"server": server})
    with running_gateway(settings, tune_process=True) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert sys.getswitchinterval() == pytest.approx(0.025)
