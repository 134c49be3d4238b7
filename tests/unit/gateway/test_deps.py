"""The dependencies a query resolves: FastAPI passes its resolver over each declared dependency on every
request, even one whose value comes from the request's cache, so the query route declares no more than the
role check and the pipeline, and neither declares one of its own."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

from gateway.deps import get_pipeline
from gateway.routes.queries import router


def _passes(dependant: Any) -> int:
    """How many times FastAPI's resolver runs for one request to this dependant (itself included)."""
    return 1 + sum(_passes(sub) for sub in dependant.dependencies)


def _route(path: str, method: str) -> APIRoute:
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            return route
    raise AssertionError(f"no route {method} {path}")


def test_submitting_a_query_resolves_the_role_check_and_the_pipeline_only() -> None:
    dependant = _route("/v1/queries", "POST").dependant
    calls = [sub.call for sub in dependant.dependencies]
    assert len(calls) == 2
    assert get_pipeline in calls
    assert all(sub.dependencies == [] for sub in dependant.dependencies)
    assert _passes(dependant) == 3


def test_polling_a_query_resolves_as_few() -> None:
    assert _passes(_route("/v1/queries/{request_id}", "GET").dependant) == 3
