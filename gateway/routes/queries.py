"""`/v1/queries`: researchers submit aggregate queries and poll the ones waiting for approval."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import PipelineDep, ResearcherDep
from gateway.pipeline import new_request_id
from gateway.problems import ACCEPTED, OK
from gateway.query import QuerySpec

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


@router.get(
    "/{request_id}",
    summary="The state or the answer of a query waiting for approval",
    responses={
        403: {"description": "policy no longer allows the answer to this researcher", **_PROBLEM},
        404: {"description": "no such request of yours", **_PROBLEM},
    },
)
async def poll(request_id: str, principal: ResearcherDep, pipeline: PipelineDep) -> dict[str, Any]:
    """Only the researcher who asked sees the request; an approved answer is released under policy again."""
    return await pipeline.collect(principal, request_id)
