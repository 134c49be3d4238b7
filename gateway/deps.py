"""Dependency providers for the routes, as `Annotated` aliases (one place to override in tests)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Request

from gateway.auth import (
    AuthError,
    Forbidden,
    IdentityProviderUnavailable,
    Principal,
    bearer_token,
    require_role,
    token_digest,
)
from gateway.pipeline import QueryPipeline
from gateway.refusal import Refusal
from gateway.runtime import SiteRuntime

Role = Literal["researcher", "steward", "auditor"]


def route_label(request: Request) -> str:
    """The endpoint as the audit log records it: method and route name (`GET:poll`), never the path,
    whose ids and parameters could read as identifiers."""
    name = getattr(request.scope.get("route"), "name", None) or "unrouted"
    return re.sub(r"[^A-Za-z0-9._:-]", "_", f"{request.method}:{name}")[:64]


async def get_runtime(request: Request) -> SiteRuntime:
    """The site's runtime, built by the app's lifespan.

    Dependencies here are `async def` though they do not await: FastAPI runs a plain `def` dependency on a
    worker thread, a hop that costs more than the function."""
    return _runtime(request)


def _runtime(request: Request) -> SiteRuntime:
    # The dependencies every query resolves (role check, pipeline) read the runtime here rather than
    # declare `RuntimeDep`: each declared sub-dependency is one more pass of FastAPI's resolver per request
    # (five instead of three for a query), even when its value comes from the request's cache.
    runtime: SiteRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[SiteRuntime, Depends(get_runtime)]


async def get_pipeline(request: Request) -> QueryPipeline:
    """The query pipeline over the runtime, or the one `app.state.pipeline_factory` builds for the request.

    A factory on the app's state, not `dependency_overrides`: FastAPI re-inspects every overridden
    dependency's signature on every request, which cost a sixth of a small query's time."""
    factory: Callable[[Request, SiteRuntime], QueryPipeline] | None = getattr(
        request.app.state, "pipeline_factory", None
    )
    runtime = _runtime(request)
    return factory(request, runtime) if factory is not None else QueryPipeline(runtime)


PipelineDep = Annotated[QueryPipeline, Depends(get_pipeline)]


async def authenticate(request: Request) -> Principal:
    """The verified principal of the bearer token; every failure is audited without the token."""
    runtime = _runtime(request)
    header = request.headers.get("authorization")
    try:
        token = bearer_token(header)
        principal = await runtime.tokens.validate(token)
        request.state.principal = principal  # so a later refusal of the body is audited with its actor
        return principal
    except AuthError as exc:
        payload: dict[str, str] = {"reason": exc.code, "route": route_label(request)}
        if header:
            payload["token_digest"] = token_digest(header.removeprefix("Bearer ").strip())
        await runtime.record("auth.failed", payload)
        if isinstance(exc, IdentityProviderUnavailable):
            raise Refusal(
                "unavailable", "Identity provider unavailable", [exc.reason], stage="authorize", audited=True
            ) from None
        raise Refusal(
            "unauthenticated", "Authentication failed", [exc.reason], stage="authorize", audited=True
        ) from None


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting only principals holding `role`; a refusal is audited."""

    async def check(request: Request) -> Principal:
        principal = await authenticate(request)
        try:
            require_role(principal, role)
        except Forbidden as exc:
            await _runtime(request).record(
                "auth.failed", {"reason": "Forbidden", "route": route_label(request), "role": role}
            )
            raise Refusal(
                "forbidden", "Role required", [exc.reason], stage="authorize", audited=True
            ) from None
        return principal

    return check


ResearcherDep = Annotated[Principal, Depends(requires("researcher"))]
StewardDep = Annotated[Principal, Depends(requires("steward"))]
AuditorDep = Annotated[Principal, Depends(requires("auditor"))]
