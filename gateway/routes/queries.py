"""`/v1/queries`: researchers submit aggregate queries and poll the ones waiting for approval."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import PipelineDep, ResearcherDep, RuntimeDep
from gateway.pipeline import new_request_id, owner
from gateway.problems import ACCEPTED, OK
from gateway.query import QuerySpec
from gateway.refusal import Refusal

router = APIRouter(prefix="/v1/queries", tags=["queries"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.post(
    "",
    summary="Submit an aggregate query",
    responses={
        200: {"description": "the released, disclosure-controlled answer"},
        202: {"description": "policy sends the query to a steward; poll the returned URL"},
        401: {"description": "no valid bearer token", **_PROBLEM},
        403: {"description": "denied by policy or disclosure control; `reasons` cite the clause", **_PROBLEM},
        404: {"description": "no such dataset at this site", **_PROBLEM},
        422: {"description": "the spec is invalid; `field` names where", **_PROBLEM},
        429: {"description": "the agreement's limit on identical queries is reached", **_PROBLEM},
    },
)
async def submit(spec: QuerySpec, principal: ResearcherDep, pipeline: PipelineDep) -> JSONResponse:
    """Run the query under this site's policy and release only what disclosure control lets through."""
    answer = await pipeline.submit(principal, spec, new_request_id())
    return JSONResponse(answer.body, status_code=int(ACCEPTED if answer.status == "pending_approval" else OK))


@router.get("/{request_id}", summary="The state or the answer of a query waiting for approval")
async def poll(request_id: str, principal: ResearcherDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Only the researcher who asked sees the request."""
    stored = await asyncio.to_thread(runtime.state.get_request, request_id)
    if stored is None or stored.subject != owner(principal):
        raise Refusal("not_found", "No such request", [f"no request {request_id} of yours"])
    if stored.status == "released" and stored.result is not None:
        return stored.result
    return {"request_id": request_id, "status": stored.status, "reasons": stored.reasons}
