"""The site gateway's FastAPI application: routes, problem handlers and the runtime's lifespan."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, APIRouter

from audit.errors import AuditError, PayloadError
from gateway import problems
from gateway.auth import TokenValidator
from gateway.deps import ROLE_CHECKS, authorize_unvalidated, failure_audit, failure_kind, route_label
from gateway.failure_audit import FailureAudit
from gateway.federation import peers
from gateway.refusal import Refusal
from gateway.routes import audit, docs, federation, glm, queries, steward, witness
from gateway.runtime import SiteRuntime
from gateway.settings import ServerSettings, SiteSettings, load_settings

CONFIG_ENV = "FEDGATE_CONFIG"
log = logging.getLogger("fedgate.gateway")

# The youngest generation of a served process is collected after this many net allocations (CPython's
# default is 700): a small query allocates thousands of short-lived objects, almost none in cycles.
YOUNG_COLLECTION_THRESHOLD: Final = 5_000


def create_app(
    settings: SiteSettings, *, tokens: TokenValidator | None = None, tune_process: bool = False
) -> FastAPI:
    """An app for one site. The runtime starts in the lifespan, so a bad policy or key stops start-up.

    `tune_process` is for a process that serves this one app (`fedgate serve`): once the runtime is up,
    `_tune_process` tunes the process's garbage collector and interpreter for serving."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Store reads and state writes run in a few threads; audit commits are awaited without one (the
        # log's committer writes them). More threads than a few per core only take turns on the GIL.
        runtime = SiteRuntime.start(settings, tokens=tokens)
        asyncio.get_running_loop().set_default_executor(runtime.threads())
        app.state.runtime = runtime
        app.state.failure_audit = FailureAudit()
        app.state.peers = peers.PeerLink(settings)
        if tune_process:
            _tune_process(settings.server)
        try:
            yield
        finally:
            await app.state.peers.aclose()
            await app.state.failure_audit.aclose()
            await runtime.aclose()

    app = FastAPI(
        title=f"fedgate gateway — {settings.site_id}",
        version="0.1.0",
        description="Aggregate queries under this site's policy; steward and auditor APIs. Errors are "
        "RFC 9457 problem documents that name the field or cite the clause that decided.",
        lifespan=lifespan,
        # /v1/queries/ is no route: a 404 problem, not a 307 with an empty body a client must follow.
        redirect_slashes=False,
        # The Swagger UI page is the gateway's own (gateway/routes/docs.py): pinned, held to its hashes and
        # to a Content-Security-Policy. No ReDoc page.
        docs_url=None,
        redoc_url=None,
    )
    problems.install(
        app, on_invalid=_audit_invalid, on_refusal=_audit_refusal, authorize=authorize_unvalidated
    )
    app.add_exception_handler(AuditError, _audit_failed)
    app.include_router(queries.router)
    app.include_router(steward.router)
    app.include_router(audit.router)
    app.include_router(federation.router)
    app.include_router(glm.router)
    peers.install(app)
    app.include_router(witness.router)
    app.include_router(docs.router)
    app.add_middleware(problems.Guard, on_error=_audit_unexpected, on_refusal=_audit_refusal)  # outermost

    @app.get("/healthz", tags=["health"], summary="Liveness: the site id and the running policy bundle")
    async def healthz() -> dict[str, Any]:
        runtime: SiteRuntime = app.state.runtime
        return {"site": settings.site_id, "jurisdiction": settings.jurisdiction,
                "policy_bundle": runtime.policy.bundle.digest}  # fmt: skip

    _document_bearer_tokens(app, [r.router for r in (queries, steward, audit, federation, glm, witness)])
    # Build every route's schemas now, in one thread: pydantic completes models lazily, and several
    # gateways started in one process (tests, the benchmark) could otherwise race to complete one model.
    app.openapi()
    return app


BEARER_SCHEME: Final = "oidcBearer"


def _document_bearer_tokens(app: FastAPI, routers: list[APIRouter]) -> None:
    """Say in the OpenAPI document which operations take an OIDC bearer token, and which role it must hold.

    The role checks read the `Authorization` header themselves (gateway.deps.requires), so FastAPI knows of
    no security scheme: without this, the document would not say that a token is needed, and the docs
    page would offer no way to give one."""
    roles: dict[tuple[str, str], str] = {}
    for route in (route for router in routers for route in router.routes):
        if isinstance(route, APIRoute):
            for dependency in route.dependant.dependencies:
                role = next((r for check, r in ROLE_CHECKS.items() if check is dependency.call), None)
                if role is not None:
                    roles.update({(route.path_format, m.lower()): role for m in route.methods or ()})
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "an access token of the site's OIDC identity provider; its roles claim must hold "
            "the role each operation names",
        }
        for (path, method), role in roles.items():
            operation = schema["paths"].get(path, {}).get(method)
            if operation is not None:
                operation["security"] = [{BEARER_SCHEME: []}]
                operation["x-fedgate-role"] = role
                said = operation.get("description")
                operation["description"] = f"{said}\n\n" if said else ""
                operation["description"] += f"Needs a bearer token with the `{role}` role."
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# Requests whose validation failures are a query's refusal (`query.refused`, stage validate); any other
# request's are a `request.refused` of its route.
QUERY_ROUTES: Final = ("/v1/queries", "/v1/federated-queries", "/v1/glm/", "/v1/federated-glm")


async def _audit_invalid(request: Request, fields: list[tuple[str, str]]) -> None:
    """Audit a body or parameter refused by validation, with its actor when known: a query's with the
    validator's messages, any other request's with its route and the first field at fault."""
    route = getattr(request.scope.get("route"), "path", "")
    if isinstance(route, str) and route.startswith(QUERY_ROUTES):
        reasons = [f"{field}: {message}" for field, message in fields][:20] or ["invalid"]
        await _audit(request, "query.refused", [{"stage": "validate", "reasons": reasons}])
        return
    payload = {"route": route_label(request), "refusal": "bad_request", "title": "Invalid request"}
    attempts = [{**payload, "field": fields[0][0]}, payload] if fields else [payload]
    await _audit(request, "request.refused", attempts)


async def _audit_failed(request: Request, exc: Exception) -> Response:
    """A request whose audit entry could not be written ends here, refused: no answer leaves that is not
    on record, and a policy change is not made (`policy_admin.replace_data` records it before putting it
    where any process loads it). The log just failed, so this refusal is logged here rather than audited."""
    # The class name only: a driver's message can quote what was being written.
    log.error("audit: %s ended unrecorded (%s); refused", route_label(request), type(exc).__name__)
    reason = "the audit log could not record this request; try again later"
    return problems.refusal_response(Refusal("unavailable", "The audit log is unavailable", [reason]))


async def _audit_unexpected(request: Request, exc: Exception) -> None:
    """Audit a request that failed in a way nothing handled (`problems.Guard`)."""
    await _audit_refusal(request, Refusal("unavailable", "Internal error"))


async def _audit_refusal(request: Request, refusal: Refusal) -> None:
    """Audit a refusal that was not audited where it was raised (a steward's, an auditor's or a polling
    request's, or the framework's own): its route, never the path, and its title, which the code wrote,
    never its reasons, which can quote what the caller sent (an id, a name)."""
    payload = {"route": route_label(request), "refusal": refusal.kind, "title": refusal.title}
    attempts = [{**payload, "field": refusal.field}, payload] if refusal.field else [payload]
    await _audit(request, "request.refused", attempts, request_id=refusal.request_id)


async def _audit(
    request: Request, event_type: str, attempts: list[dict[str, Any]], *, request_id: str | None = None
) -> None:
    """Append the first of `attempts` the audit log accepts (a later one leaves out a field an earlier one
    named; reasons it will not store are covered, see SiteRuntime.record), with the actor when known. A
    log that cannot be written leaves a warning and the refusal stands: a refusal never turns into a 500."""
    runtime: SiteRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return
    principal = getattr(request.state, "principal", None)

    async def write(suppressed: int) -> None:
        for payload in attempts:
            try:
                await runtime.record(
                    event_type, {**payload, **({"suppressed": suppressed} if suppressed else {})},
                    principal=principal, request_id=request_id, cover_reasons=True,
                )  # fmt: skip
                return
            except PayloadError:
                continue
            except AuditError:
                break
        log.warning("a refusal could not be audited on %s", route_label(request))

    if principal is None:
        # Anyone can send these: a flood of them is on record as counts (gateway.failure_audit).
        first = {**attempts[0], "route": failure_kind(request)}
        kind = (event_type, json.dumps(first, sort_keys=True, default=str))
        await failure_audit(request).record(kind, write, write)
    else:
        await write(0)


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker serving: the config path is in $FEDGATE_CONFIG.
    Each worker process serves this one app, so the process is tuned for it once the app has started."""
    return create_app(load_settings(os.environ[CONFIG_ENV]), tune_process=True)


def _tune_process(server: ServerSettings) -> None:
    """Tune a process that serves one app, once it has started: its garbage collector and its interpreter's
    switch interval.

    What start-up built (modules, routes, schemas, the runtime and its caches) lives as long as the process:
    `gc.freeze` moves it out of the generations the collector scans, so a full collection no longer walks
    it; and the youngest generation is collected less often (`YOUNG_COLLECTION_THRESHOLD`). Measured with
    two gateways under the same load at the same time: 5-10 % less CPU per small query. Cycles made while
    serving are still collected; only objects alive at start-up are exempt.

    A thread that wants the GIL waits one switch interval before it asks the holder to let go. A worker's
    event loop, pool threads and audit committer hand the GIL to each other several times per query, and
    each call into DuckDB or SQLite gives it up; the default of 10 ms (`[server] switch_interval_ms`)
    forces fewer hand-offs than Python's 5 ms, which gave a lower p50 and p99 under load (docs/queries.md,
    "Running a site for throughput")."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)
    sys.setswitchinterval(server.switch_interval_ms / 1000)
