"""Requests that queue up for the gateway's pool threads are released together (gateway.releases): queries
of one shape share one DuckDB statement. Over real HTTP, each request still gets its own answer, the one
it gets alone; a refusal inside a batch stays with its own request; and the audit log of it all verifies.

The pool is held while the requests arrive, so that they all wait for it and are taken in one pass."""

from __future__ import annotations

import concurrent.futures
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_site import Site, bearer, serving, verify_exported_log
from oidc_issuer import LoopbackTestIssuer

import gateway.query.execute  # noqa: F401 - patched through sys.modules
from gateway.app import create_app
from gateway.releases import MAX_TAKEN

PURPOSE = {"duo": ["DUO:0000006"]}


def crosstab(threshold: float) -> dict[str, Any]:
    return {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": PURPOSE, "kind": "crosstab",
            "group_by": ["sex"], "filters": {"column": "bmi", "op": ">", "value": threshold}}  # fmt: skip


@pytest.fixture()
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch of queries the gateway ran as one statement."""
    sizes: list[int] = []
    execute_module = sys.modules["gateway.query.execute"]
    original = execute_module._counted_together

    def spy(engine: Any, queries: Any, population: int) -> Any:
        sizes.append(len(queries))
        return original(engine, queries, population)

    monkeypatch.setattr(execute_module, "_counted_together", spy)
    return sizes


@pytest.fixture()
def gateway_app(tmp_site: Site) -> Iterator[tuple[str, Any]]:
    site_app = create_app(tmp_site.settings)
    with serving(site_app) as url:
        yield url, site_app


def asked_together(
    url: str, app: Any, requests: list[tuple[dict[str, Any], dict[str, str]]]
) -> list[httpx.Response]:
    """Send the requests at once while the pool's threads are held, let go once all of them wait for the
    pool, and return the responses in order."""
    runtime = app.state.runtime
    held = threading.Event()
    pool = runtime.threads()
    holders = [pool.submit(held.wait, 30) for _ in range(runtime.settings.server.threads)]

    def ask(body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as http:
            return http.post("/v1/queries", json=body, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as clients:
        sent = [clients.submit(ask, body, headers) for body, headers in requests]
        deadline = time.monotonic() + 30
        while runtime.releases.waiting() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runtime.releases.waiting() == len(requests), "the requests did not all wait for the pool"
        # The cohort is one row group: its releases wait in the short lane, which runs one pass at a time.
        assert runtime.releases.short.waiting() == len(requests)
        held.set()
        responses = [f.result() for f in sent]
    for holder in holders:
        holder.result()
    return responses


def released(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    return {key: body[key] for key in ("rows", "disclosure", "result_hash")}


def test_queries_released_together_get_the_answers_they_get_alone(
    gateway_app: tuple[str, Any], idp: LoopbackTestIssuer, batches: list[int]
) -> None:
    url, app = gateway_app
    thresholds = [18.0, 20.0, 22.5, 24.0, 25.0, 27.5, 30.0, 32.0]
    requests = [
        (crosstab(t), bearer(idp, "researcher", sub=f"researcher-{i}")) for i, t in enumerate(thresholds)
    ]
    with httpx.Client(base_url=url, timeout=60) as http:
        # A first query of the shape runs alone and tells the gateway its population: a shared statement
        # needs it.
        warm = http.post("/v1/queries", json=crosstab(26.0), headers=bearer(idp, "researcher", sub="warm"))
        assert warm.status_code == 200
    together = [released(r) for r in asked_together(url, app, requests)]
    assert batches == [MAX_TAKEN] * (len(thresholds) // MAX_TAKEN)  # as many in one statement as a pass takes
    with httpx.Client(base_url=url, timeout=60) as http:
        alone = [released(http.post("/v1/queries", json=body, headers=headers)) for body, headers in requests]
    assert len(batches) == len(thresholds) // MAX_TAKEN  # asked one at a time, each ran alone
    assert together == alone
    # And they are eight different answers, not one handed to all.
    assert len({json.dumps(answer["rows"]) for answer in together}) == len(thresholds)


def test_a_refusal_inside_a_batch_stays_with_its_own_request(
    gateway_app: tuple[str, Any], tmp_site: Site, idp: LoopbackTestIssuer, batches: list[int], tmp_path: Path
) -> None:
    url, app = gateway_app
    repeated = crosstab(26.0)
    limited = bearer(idp, "researcher", sub="researcher-repeats")
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(3):  # DSA-TEST-OPEN allows an identical query three times
            assert http.post("/v1/queries", json=repeated, headers=limited).status_code == 200
    requests = [
        (crosstab(21.0), bearer(idp, "researcher", sub="researcher-a")),
        (repeated, limited),  # the fourth time: refused when counted, before it runs
        (crosstab(60.0), bearer(idp, "researcher", sub="researcher-b")),  # too few rows to release
        (crosstab(29.0), bearer(idp, "researcher", sub="researcher-c")),
    ]
    first, fourth_time, too_few, last = asked_together(url, app, requests)
    assert batches == [3]  # the three that were counted shared one statement
    assert fourth_time.status_code == 429 and fourth_time.json()["reasons"][0].startswith(
        "DSA-TEST-OPEN allows"
    )
    assert too_few.status_code == 403 and too_few.json()["title"] == "Refused by disclosure control"
    with httpx.Client(base_url=url, timeout=60) as http:
        again = [
            http.post("/v1/queries", json=body, headers=headers)
            for body, headers in (requests[0], requests[3])
        ]
        export = http.get("/v1/audit/export", headers=bearer(idp, "auditor"))
    assert [released(first), released(last)] == [released(r) for r in again]
    # Every request's trail is in the log, which verifies.
    assert export.status_code == 200
    verify_exported_log(export.content, tmp_site.settings, tmp_path)
    text = export.content.decode()
    for refused in (fourth_time, too_few):
        request_id = refused.json()["request_id"]
        assert request_id in text
    stages = {"limit", "disclosure"}
    found = {stage for stage in stages if f'"stage":"{stage}"' in text}
    assert found == stages
