"""Dependency providers for the routes, as `Annotated` aliases (one place to override in tests)."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Request

from gateway.auth import (
    AuthError,
    Forbidden,
    IdentityProviderUnavailable,
    NotAuthenticated,
    Principal,
    bearer_token,
    header_digest,
    require_role,
)
from gateway.failure_audit import FailureAudit, app_failures, suppressed_field
from gateway.pipeline import QueryPipeline
from gateway.refusal import Refusal
from gateway.runtime import SiteRuntime

Role = Literal["researcher", "steward", "auditor"]
log = logging.getLogger(__name__)


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
        if principal.dev and not _on_loopback(request):
            # The site's config binds a dev-mode gateway to loopback, but the app can be served by other
            # means (`uvicorn --factory --host ...`): a request that came over another address is refused.
            raise NotAuthenticated("a dev token is accepted only on a loopback address")
        request.state.principal = principal  # so a later refusal of the body is audited with its actor
        return principal
    except AuthError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - a check that fails in any way authenticates no one
        log.error("authentication failed on an unexpected %s", type(exc).__name__)
        error = NotAuthenticated("the token could not be checked")
    payload: dict[str, str | int] = {"reason": error.code, "route": route_label(request)}
    digest = {"token_digest": header_digest(header)} if header else {}

    async def write(suppressed: int) -> None:
        await runtime.record("auth.failed", {**payload, **digest, **suppressed_field(suppressed)})

    async def write_held(suppressed: int) -> None:  # stands for failures of many tokens: no digest
        await runtime.record("auth.failed", {**payload, **suppressed_field(suppressed)})

    await failure_audit(request).record(("auth.failed", error.code, failure_kind(request)), write, write_held)
    if isinstance(error, IdentityProviderUnavailable):
        raise Refusal(
            "unavailable", "Identity provider unavailable", [error.reason], stage="authorize", audited=True
        ) from None
    raise Refusal(
        "unauthenticated",
        "Authentication failed",
        [error.reason],
        stage="authorize",
        audited=True,
        bearer_error=error.bearer_error,
    ) from None


def failure_audit(request: Request) -> FailureAudit:
    """The app's bounded writer of entries of failures by callers nobody authenticated."""
    return app_failures(request.app.state)


def failure_kind(request: Request) -> str:
    """The route of a failure as its kind names it: the route's name without the method, which the caller
    chooses (a flood of methods would otherwise be as many kinds)."""
    return str(getattr(request.scope.get("route"), "name", None) or "unrouted")


def _on_loopback(request: Request) -> bool:
    """Whether the request arrived on a loopback address of this host (the socket's own address)."""
    server = request.scope.get("server")
    try:
        return server is not None and ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return False


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting only principals holding `role`; a refusal is audited."""

    async def check(request: Request) -> Principal:
        principal = await authenticate(request)
        try:
            require_role(principal, role)
        except Forbidden as exc:
            await _runtime(request).record(
                "auth.failed",
                {"reason": "Forbidden", "route": route_label(request), "role": role},
                principal=principal,
            )
            raise Refusal(
                "forbidden",
                "Role required",
                [exc.reason],
                stage="authorize",
                audited=True,
                bearer_error=exc.bearer_error,
            ) from None
        return principal

    ROLE_CHECKS[check] = role
    return check


ROLE_CHECKS: dict[Callable[..., Awaitable[Principal]], Role] = {}
"""Every role check `requires` made, and its role."""


async def authorize_unvalidated(request: Request) -> None:
    """Run the role check of the request's route, if it has one that has not run: FastAPI reads a JSON body
    before it solves any dependency, so a body that is not JSON is refused before the token is looked
    at. A Refusal (audited) when the caller is not authenticated or lacks the role."""
    if getattr(request.state, "principal", None) is not None:
        return  # authenticated already; a role refusal would have ended the request before validation
    dependant = getattr(request.scope.get("route"), "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        if dependency.call in ROLE_CHECKS:
            await dependency.call(request)
            return


ResearcherDep = Annotated[Principal, Depends(requires("researcher"))]
StewardDep = Annotated[Principal, Depends(requires("steward"))]
AuditorDep = Annotated[Principal, Depends(requires("auditor"))]
