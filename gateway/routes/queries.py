"""`/v1/queries`: researchers submit aggregate queries and poll the ones waiting for approval."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import PipelineDep, ResearcherDep
from gateway.pipeline import new_request_id
from gateway.problems import ACCEPTED, AUTHENTICATED, OK, documented
from gateway.query import QuerySpec

router = APIRouter(prefix="/v1/queries", tags=["queries"], responses=AUTHENTICATED)


@router.post(
    "",
    summary="Submit an aggregate query",
    responses=documented(
        ok="the released, disclosure-controlled answer",
        accepted="policy sends the query to a steward; poll `GET /v1/queries/{request_id}`",
        bad_request="the spec is invalid; `field` names where",
        forbidden="denied by policy or disclosure control, or the token lacks the researcher role; "
        "`reasons` cite the clause",
        not_found="no such dataset at this site",
        limit="the agreement's limit on identical queries is reached",
        unavailable="the identity provider, the policy engine, the store or the audit log is unavailable; "
        "nothing was released",
    ),
)
async def submit(spec: QuerySpec, principal: ResearcherDep, pipeline: PipelineDep) -> JSONResponse:
    """Run the query under this site's policy and release only what disclosure control lets through."""
    answer = await pipeline.submit(principal, spec, new_request_id())
    return JSONResponse(answer.body, status_code=int(ACCEPTED if answer.status == "pending_approval" else OK))


@router.get(
    "/{request_id}",
    summary="The state or the answer of a query waiting for approval",
    responses=documented(
        ok="the request's state, or its released answer",
        forbidden="policy no longer allows the answer to this researcher, or the token lacks the role",
        not_found="no such request of yours",
    ),
)
async def poll(request_id: str, principal: ResearcherDep, pipeline: PipelineDep) -> dict[str, Any]:
    """Only the researcher who asked sees the request; an approved answer is released under policy again."""
    return await pipeline.collect(principal, request_id)
