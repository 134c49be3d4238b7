"""`/v1/queries`: researchers submit aggregate queries and poll the ones waiting for approval."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.deps import PipelineDep, ResearcherDep
from gateway.pipeline import new_request_id
from gateway.problems import ACCEPTED, AUTHENTICATED, OK, documented
from gateway.query import QuerySpec

router = APIRouter(prefix="/v1/queries", tags=["queries"], responses=AUTHENTICATED)


# The bodies below are built by the pipeline as plain JSON (a response model would validate every answer
# again); these models document them on the OpenAPI page, and tests/integration/test_openapi.py checks
# real answers against them.


class DisclosureReport(BaseModel):
    """What disclosure control did to the answer: never a hidden value, only counts and rules."""

    kind: str = Field(description="the analysis kind the rules were applied for")
    cells: int = Field(description="cells (or groups, bins, time points) in the answer")
    margins: int = Field(description="row, column and grand totals included in `rows`")
    suppressed_primary: int = Field(description="cells hidden for holding fewer than `min_cell_count` rows")
    suppressed_complementary: int = Field(description="cells hidden so the others cannot be subtracted")
    min_cell_count: int
    round_to: int = Field(description="counts are released as multiples of this (1: exact)")
    reasons: list[str] = Field(description="sentences saying what was hidden and why")
    suppressed: int = Field(description="all hidden cells")
    rounded: bool


class PolicySummary(BaseModel):
    decision: str = Field(description="always `allow` on a released answer")
    reasons: list[str] = Field(description="the clauses that allowed it")
    bundle_digest: str = Field(description="the policy bundle (policies and data) that decided")
    publication_moratorium_until: str | None = Field(
        default=None,
        description="present when the dataset's consent sets a publication moratorium (DUO:0000024): "
        "results may not be published before this day (YYYY-MM-DD)",
    )


class QueryAnswer(BaseModel):
    """A released answer: pandas-friendly rows (`pd.DataFrame(body["rows"])`), a suppressed value is null
    and a `suppressed` flag column says why."""

    request_id: str
    status: str = Field(description="`released`")
    dataset: str
    dataset_version: int
    kind: str
    columns: list[str] = Field(description="the columns of each row, in order")
    rows: list[dict[str, Any]]
    disclosure: DisclosureReport
    policy: PolicySummary
    result_hash: str = Field(description="sha256 of the released part, as the audit log's `query.released`")
    computed_at: str | None = Field(
        default=None,
        description="an approved answer only: when it was computed (UTC); a consent withdrawal the run did "
        "not apply makes collecting it refused",
    )


class PendingAnswer(BaseModel):
    """A query waiting for a steward: poll `poll` for its state and, once approved, its answer."""

    request_id: str
    status: str = Field(description="`pending_approval`")
    reasons: list[str] = Field(description="why policy sends it to a steward")
    poll: str


class RequestState(BaseModel):
    """A queued request that has no answer to give (yet): pending, being decided, rejected or refused."""

    request_id: str
    status: str = Field(description="`pending_approval`, `deciding`, `rejected` or `refused`")
    reasons: list[str]


@router.post(
    "",
    summary="Submit an aggregate query",
    responses=documented(
        ok=("the released, disclosure-controlled answer", QueryAnswer),
        accepted=("policy sends the query to a steward; poll `GET /v1/queries/{request_id}`", PendingAnswer),
        bad_request="the spec is invalid; `field` names where",
        forbidden=(
            "denied by policy or disclosure control; `reasons` cite the clause (a policy that could not be "
            "evaluated, its engine failing or unreachable, denies: `policy evaluation failed: …`)"
        ),
        not_found="no such dataset at this site",
        limit="the agreement's limit on identical queries is reached",
        unavailable="the store or the audit log is unavailable; nothing was released",
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
        ok=("the request's state, or its released answer", QueryAnswer | RequestState),
        forbidden="policy no longer allows the answer to this researcher",
        not_found="no such request of yours",
    ),
)
async def poll(request_id: str, principal: ResearcherDep, pipeline: PipelineDep) -> dict[str, Any]:
    """Only the researcher who asked sees the request; an approved answer is released under policy again."""
    return await pipeline.collect(principal, request_id)
