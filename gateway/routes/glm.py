"""Federated GLM over HTTP: a site's session endpoints, and the coordinator endpoint that drives a fit.

Site side (the coordinator calls these with the researcher's own token):
    POST   /v1/glm/sessions                     open a session (policy kind "glm"); 202 when approval is due
    POST   /v1/glm/sessions/{id}/iterations     one iteration at β: XᵀWX, XᵀWz, deviance, Pearson χ², n
    DELETE /v1/glm/sessions/{id}                end the session
Coordinator side (researcher role):
    POST   /v1/federated-glm                    fit over this site and its peers: coefficients, standard
                                                errors, z, p, intervals, or "stopped" with each site's reason
A session, a site's row of a fit and the fit itself carry `publication_moratorium_until` when the data are
under a publication moratorium (DUO:0000024), as a query's answer does.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import rfc8785
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from gateway.deps import ResearcherDep, RuntimeDep
from gateway.federation.glm_fit import (
    DEFAULT_MAX_ITERATIONS,
    FitStopped,
    GlmFitError,
    GlmSite,
    HttpGlmSite,
    fit_federated_glm,
)
from gateway.federation.glm_site import (
    MAX_ITERATIONS,
    GlmSessionRequest,
    GlmSessions,
    GlmSiteService,
    IterationRequest,
    LocalGlmSite,
)
from gateway.federation.peers import PeerLink, verified_peer
from gateway.pipeline import hashed, new_request_id, sha256_label
from gateway.problems import ACCEPTED, AUTHENTICATED, OK, documented
from gateway.refusal import Refusal
from gateway.routes.bodies import (
    FederatedGlmFit,
    FederatedGlmStopped,
    GlmIteration,
    GlmSession,
    GlmSessionClosed,
)
from gateway.runtime import SiteRuntime

router = APIRouter(tags=["federated glm"], responses=AUTHENTICATED)


class FederatedGlmRequest(GlmSessionRequest):
    """A session request plus the sites to fit over (default: this site and every peer) and the cap."""

    sites: list[str] | None = Field(default=None, min_length=1, max_length=50)
    max_iterations: int = Field(default=DEFAULT_MAX_ITERATIONS, ge=1, le=MAX_ITERATIONS)

    @field_validator("max_iterations", mode="before")
    @classmethod
    def _a_json_integer(cls, value: Any) -> Any:
        # As the schema types it: a JSON number of no fraction, never text ("3") nor a boolean, which
        # pydantic would otherwise turn into one.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("max_iterations must be an integer")
        return value


class GlmPending(BaseModel):
    """A session policy sends to a steward: nothing was opened (sessions have no steward queue yet)."""

    status: str = Field(description="`pending_approval`")
    reasons: list[str] = Field(description="why policy wants a steward's approval")


def glm_service(request: Request, runtime: SiteRuntime) -> GlmSiteService:
    """The site's GLM service; sessions live in this process for the app's lifetime."""
    state = request.app.state
    if getattr(state, "glm_sessions", None) is None:
        state.glm_sessions = GlmSessions()
    return GlmSiteService(runtime, state.glm_sessions)


@router.post(
    "/v1/glm/sessions",
    summary="Open a GLM session at this site",
    responses=documented(
        ok=("the session: its id, the model's parameters and the iteration cap", GlmSession),
        accepted=("policy wants a steward's approval; nothing was opened", GlmPending),
        forbidden="denied by policy or disclosure control",
        not_found="no such dataset at this site",
        limit="this researcher has as many GLM sessions open as allowed",
    ),
)
async def open_session(
    body: GlmSessionRequest, principal: ResearcherDep, runtime: RuntimeDep, request: Request
) -> JSONResponse:
    """Decide under this site's policy, load the consented rows here, check them, and open a session."""
    service = glm_service(request, runtime)
    answer = await service.open(principal, body, new_request_id(), coordinator=verified_peer(request))
    status = ACCEPTED if answer["status"] == "pending_approval" else OK
    return JSONResponse(answer, status_code=int(status))


@router.post(
    "/v1/glm/sessions/{session_id}/iterations",
    summary="One Fisher-scoring iteration at β within an open session",
    responses=documented(
        ok=("the sums at β: XᵀWX, XᵀWz, deviance, Pearson χ² and n", GlmIteration),
        bad_request="β has the wrong number of coefficients; `field` names it",
        forbidden="a disclosure check failed; the session is closed",
        not_found="no such session of yours under this agreement",
        limit="the session's iteration cap is reached",
    ),
)
async def iterate(
    session_id: str, body: IterationRequest, principal: ResearcherDep, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    """Sums only: residuals and linear predictors stay here."""
    return await glm_service(request, runtime).iterate(principal, session_id, body, new_request_id())


@router.delete(
    "/v1/glm/sessions/{session_id}",
    summary="End a GLM session",
    responses=documented(
        ok=("the session is closed", GlmSessionClosed),
        not_found="no open GLM session with this id for you",
    ),
)
async def close_session(
    session_id: str, principal: ResearcherDep, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    if not await glm_service(request, runtime).close(principal, session_id, new_request_id()):
        raise Refusal("not_found", "No such GLM session", ["no open GLM session with this id for you"])
    return {"session": session_id, "status": "closed"}


@router.post(
    "/v1/federated-glm",
    summary="Fit a GLM over this site and its peers",
    responses=documented(
        ok=(
            "the fit (coefficients, standard errors, z, p, intervals), or `stopped` with each site's reason",
            FederatedGlmFit | FederatedGlmStopped,
        ),
        bad_request="an unknown site, an invalid model, or a fit that failed to combine",
        unavailable="this gateway cannot sign requests to its peers",
    ),
)
async def federated_glm(
    body: FederatedGlmRequest, principal: ResearcherDep, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    """Fisher scoring as DataSHIELD's ds.glm; a site that refuses stops the fit, named with its reason."""
    settings = runtime.settings
    peers = {p.id: p for p in settings.peers}
    wanted = body.sites or [settings.site_id, *peers]
    unknown = [s for s in wanted if s != settings.site_id and s not in peers]
    if unknown:
        raise Refusal(
            "bad_request",
            "Unknown site",
            [f"{s!r} is not a peer of this gateway" for s in unknown],
            field="sites",
        )
    session_request = GlmSessionRequest.model_validate(body.model_dump(exclude={"sites", "max_iterations"}))
    request_id = new_request_id()
    authorization = request.headers.get("authorization", "")
    link: PeerLink | None = getattr(request.app.state, "peers", None)
    sites: list[GlmSite] = []
    for site in dict.fromkeys(wanted):
        if site == settings.site_id:
            sites.append(LocalGlmSite(glm_service(request, runtime), principal, session_request, request_id))
            continue
        if link is None or link.signer is None:
            raise Refusal(
                "unavailable",
                "This gateway cannot reach its peers",
                ["no peer signing key is configured (peer_key_file)"],
                stage="plan",
            )
        sites.append(
            HttpGlmSite(
                site,
                peers[site].url,
                authorization,
                session_request.model_dump(mode="json"),
                link.http,
                sign=functools.partial(link.sign, site),
            )
        )
    # The coordinator's own record of the fit, as of a federated query (each site audits its own part).
    query_hash = sha256_label(hashed(session_request))

    async def record(event: str, payload: dict[str, Any]) -> None:
        payload = {"query_hash": query_hash, **payload}
        await runtime.record(event, payload, principal=principal, request_id=request_id, cover_reasons=True)

    await record(
        "federation.received",
        {
            "kind": "glm",
            "dataset": session_request.dataset,
            "dsa": session_request.agreement,
            "sites": len(sites),
        },
    )
    try:
        fit = await fit_federated_glm(sites, body.model.family, max_iterations=body.max_iterations)
        answer = fit.to_dict()
        result_hash = sha256_label(hashlib.sha256(rfc8785.dumps(answer)).hexdigest())
    except FitStopped as stopped:
        await record("federation.refused", {"reasons": [str(stopped)]})
        return {
            "status": "stopped",
            "iteration": stopped.iteration,
            "reasons": [str(stopped)],
            "sites": stopped.sites,
        }
    except GlmFitError as exc:
        await record("federation.refused", {"reasons": [str(exc)]})
        raise Refusal(
            "bad_request", "The federated fit failed", [str(exc)], stage="combine", audited=True
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, nothing leaves unaudited
        reasons = [f"the fit could not be completed ({type(exc).__name__}); nothing was released"]
        await record("federation.refused", {"reasons": reasons})
        raise Refusal(
            "unavailable", "The federated fit failed", reasons, stage="combine", audited=True
        ) from None
    await record(
        "federation.released", {"result_hash": result_hash, "covered": len(sites), "answered": len(sites)}
    )
    return answer
