"""The site gateway's FastAPI application: routes, problem handlers and the runtime's lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from audit.errors import AuditError
from gateway import problems
from gateway.auth import TokenValidator
from gateway.federation import peers
from gateway.routes import audit, federation, glm, queries, steward, witness
from gateway.runtime import SiteRuntime
from gateway.settings import SiteSettings, load_settings

CONFIG_ENV = "FEDGATE_CONFIG"
log = logging.getLogger("fedgate.gateway")


def create_app(settings: SiteSettings, *, tokens: TokenValidator | None = None) -> FastAPI:
    """An app for one site. The runtime starts in the lifespan, so a bad policy or key stops start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Store reads and state writes run in a few threads; audit commits are awaited without one (the
        # log's committer writes them). More threads than a few per core only take turns on the GIL.
        runtime = SiteRuntime.start(settings, tokens=tokens)
        asyncio.get_running_loop().set_default_executor(runtime.threads())
        app.state.runtime = runtime
        app.state.peers = peers.PeerLink(settings)
        try:
            yield
        finally:
            await app.state.peers.aclose()
            await runtime.aclose()

    app = FastAPI(
        title=f"fedgate gateway — {settings.site_id}",
        version="0.1.0",
        description="Aggregate queries under this site's policy; steward and auditor APIs. Errors are "
        "RFC 9457 problem documents that name the field or cite the clause that decided.",
        lifespan=lifespan,
    )
    problems.install(app, on_invalid=_audit_invalid)
    app.include_router(queries.router)
    app.include_router(steward.router)
    app.include_router(audit.router)
    app.include_router(federation.router)
    app.include_router(glm.router)
    peers.install(app)
    app.include_router(witness.router)

    @app.get("/healthz", tags=["health"], summary="Liveness: the site id and the running policy bundle")
    async def healthz() -> dict[str, Any]:
        runtime: SiteRuntime = app.state.runtime
        return {"site": settings.site_id, "jurisdiction": settings.jurisdiction,
                "policy_bundle": runtime.policy.bundle.digest}  # fmt: skip

    # Build every route's schemas now, in one thread: pydantic completes models lazily, and several
    # gateways started in one process (tests, the benchmark) could otherwise race to complete one model.
    app.openapi()
    return app


async def _audit_invalid(request: Request, reasons: list[str]) -> None:
    """Audit a body refused by validation: every refusal is recorded, with its actor when known."""
    runtime: SiteRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return
    principal = getattr(request.state, "principal", None)
    try:
        await runtime.record(
            "query.refused", {"stage": "validate", "reasons": reasons[:20]}, principal=principal
        )
    except AuditError:
        # A message the audit registry will not store must not turn a 422 into a 500.
        log.warning("a validation refusal could not be audited on %s", request.url.path)


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker serving: the config path is in $FEDGATE_CONFIG."""
    return create_app(load_settings(os.environ[CONFIG_ENV]))
