"""`/v1/federated-queries`: a researcher's query fanned out to the federation and pooled here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BeforeValidator

from gateway.auth import bearer_token
from gateway.deps import ResearcherDep, RuntimeDep
from gateway.federation.coordinator import Coordinator, parse_federated
from gateway.federation.peers import PeerLink
from gateway.problems import AUTHENTICATED, documented
from gateway.routes.bodies import FederatedAnswer, FederatedQuery


def _unchanged(body: Any) -> Any:
    """The body as sent: the validator is there only to lend the page `FederatedQuery`'s schema."""
    return body


FederatedBody = Annotated[dict[str, Any], BeforeValidator(_unchanged, json_schema_input_type=FederatedQuery)]
"""Any JSON object: `parse_federated` validates it, so that its refusals name the field at fault as a single
site's do. The page describes it as `FederatedQuery`."""

router = APIRouter(prefix="/v1/federated-queries", tags=["federation"], responses=AUTHENTICATED)


@router.post(
    "",
    summary="Submit a query to several sites and receive the pooled answer with every site's status",
    responses=documented(
        ok=(
            "the pooled answer, the sites it covers and one status per target site; `columns` and the "
            "rows' keys vary with the query's kind",
            FederatedAnswer,
        ),
        bad_request="the spec, `sites` or `timeout_s` is invalid; `field` names where",
    ),
)
async def submit(
    request: Request,
    principal: ResearcherDep,
    runtime: RuntimeDep,
    body: Annotated[
        FederatedBody,
        Body(
            description="a query spec of /v1/queries, of a kind the federation pools, plus optional `sites` "
            "(site ids; default: every peer and this site when it holds the dataset) and `timeout_s` per "
            "site (default 10)"
        ),
    ],
) -> dict[str, Any]:
    """Each site re-validates the researcher's own token and answers under its own policy."""
    spec, sites, timeout_s = parse_federated(body)
    link: PeerLink = request.app.state.peers
    # The token was just validated by ResearcherDep; it goes to each peer unchanged.
    token = bearer_token(request.headers.get("authorization"))
    return await Coordinator(runtime, link).run(principal, token, spec, sites, timeout_s)
