"""RFC 9457 problem responses: the one module that knows HTTP status codes.

Domain packages raise their own errors; the pipeline turns them into `Refusal`s (auditing each), and the
handlers here render those, authentication failures and request-validation errors as
`application/problem+json` bodies that name the field. Nothing the gateway does on purpose is a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit.errors import (
    MalformedRequest,
    OldSizeMismatch,
    OldSizeTooLarge,
    ProofRejected,
    UnknownOrigin,
    UntrustedCheckpoint,
    WitnessError,
)
from gateway.refusal import Refusal, RefusalKind

PROBLEM_JSON = "application/problem+json"

STATUS: dict[RefusalKind, HTTPStatus] = {
    "bad_request": HTTPStatus.UNPROCESSABLE_ENTITY,
    "unauthenticated": HTTPStatus.UNAUTHORIZED,
    "forbidden": HTTPStatus.FORBIDDEN,
    "not_found": HTTPStatus.NOT_FOUND,
    "conflict": HTTPStatus.CONFLICT,
    "limit": HTTPStatus.TOO_MANY_REQUESTS,
    "unavailable": HTTPStatus.SERVICE_UNAVAILABLE,
}
OK = HTTPStatus.OK
ACCEPTED = HTTPStatus.ACCEPTED
PEER_UNREACHABLE = frozenset(
    {HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT}
)
"""What a peer gateway answers, or a proxy in front of it, when it cannot be reached or is down."""

# C2SP tlog-witness prescribes its own statuses and text/plain bodies (not problem+json): peers' witness
# clients read the status, and a 409 carries the witness's size as `text/x.tlog.size`. The submitter in
# gateway/federation/witnessing.py reads the same table, so both sides agree on the codes.
WITNESS_STATUS: dict[type[WitnessError], HTTPStatus] = {
    UnknownOrigin: HTTPStatus.NOT_FOUND,
    UntrustedCheckpoint: HTTPStatus.FORBIDDEN,
    MalformedRequest: HTTPStatus.BAD_REQUEST,
    OldSizeTooLarge: HTTPStatus.BAD_REQUEST,
    OldSizeMismatch: HTTPStatus.CONFLICT,
    ProofRejected: HTTPStatus.UNPROCESSABLE_ENTITY,
}
TLOG_SIZE = "text/x.tlog.size"


class Problem(BaseModel):
    """An RFC 9457 problem document, as every refusal of the gateway's API is written (for the OpenAPI
    page; `problem` builds the bodies)."""

    type: str = Field("about:blank", description="always about:blank: `title` and `status` say it all")
    title: str = Field(description="what kind of refusal, e.g. 'Denied by policy'")
    status: int = Field(description="the HTTP status of the response")
    detail: str | None = Field(None, description="the reasons joined, for a human reader")
    reasons: list[str] | None = Field(None, description="each reason, e.g. the policy clause that decided")
    field: str | None = Field(None, description="the body field or parameter at fault, dotted")
    request_id: str | None = Field(None, description="the request's id in the audit log")
    errors: list[dict[str, str]] | None = Field(
        None, description="every field that failed validation: `field` and `message` of each"
    )


_PROBLEM_SCHEMA: dict[str, Any] = Problem.model_json_schema()
_ANSWERS: dict[str, HTTPStatus] = {"ok": OK, "accepted": ACCEPTED}


_AUTH_REFUSALS: dict[str, str] = {
    "bad_request": "a parameter or the body is invalid; `field` names where",
    "unauthenticated": "no valid bearer token",
    "forbidden": "the token lacks this endpoint's role",
    "unavailable": "the identity provider or a component the answer needs is unavailable",
}


def documented(**described: str | tuple[str, Any]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route behind a role: each keyword is an answer ('ok', 'accepted') or a
    refusal kind (`RefusalKind`), with its description; an answer may come as (description, model of its
    body). Refusals are documented as problem+json `Problem` bodies, and a refusal every endpoint behind a
    role can give (`AUTHENTICATED`) keeps that cause beside the route's own. Routes name kinds, never
    status codes, so the codes stay in this module."""
    return _documented(described, also=_AUTH_REFUSALS)


def _documented(
    described: Mapping[str, str | tuple[str, Any]], *, also: Mapping[str, str]
) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for name, given in described.items():
        description, model = given if isinstance(given, tuple) else (given, None)
        if name in _ANSWERS:
            out[int(_ANSWERS[name])] = {"description": description, **({"model": model} if model else {})}
        elif name in STATUS:
            if name in also and also[name] != description:
                description = f"{description}; or {also[name]}"
            schema = {"schema": _PROBLEM_SCHEMA}
            out[int(STATUS[name])] = {"description": description, "content": {PROBLEM_JSON: schema}}
        else:
            raise ValueError(f"{name!r} is neither an answer nor a refusal kind")
    return out


AUTHENTICATED: dict[int | str, dict[str, Any]] = _documented(_AUTH_REFUSALS, also={})
"""The refusals of every endpoint behind a role, for its router's `responses`."""


def problem(status: HTTPStatus, title: str, *, detail: str | None = None, **extensions: Any) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": int(status)}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extensions.items() if v is not None})
    headers = {"WWW-Authenticate": 'Bearer realm="fedgate"'} if status == HTTPStatus.UNAUTHORIZED else None
    return JSONResponse(body, status_code=int(status), media_type=PROBLEM_JSON, headers=headers)


def witness_response(exc: WitnessError) -> Response:
    """A witness refusal as tlog-witness prescribes: its status, and the witness's size on a 409."""
    status = next(WITNESS_STATUS[c] for c in type(exc).__mro__ if c in WITNESS_STATUS)
    if isinstance(exc, OldSizeMismatch):
        # Set the header by hand: a text/* media type would get a charset parameter appended.
        return Response(f"{exc.size}\n", status_code=int(status), headers={"Content-Type": TLOG_SIZE})
    return PlainTextResponse(f"{exc}\n", status_code=int(status))


def refusal_response(refusal: Refusal) -> JSONResponse:
    """Render a refusal."""
    return problem(
        STATUS[refusal.kind],
        refusal.title,
        detail="; ".join(refusal.reasons) or None,
        reasons=refusal.reasons or None,
        field=refusal.field,
        request_id=refusal.request_id,
    )


def _field_messages(exc: RequestValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        # Pydantic's message may quote the offending input; the field and the rule are enough.
        out.append((".".join(loc) or "body", str(err.get("msg", "invalid"))))
    return out


def _validation_response(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": field, "message": message} for field, message in _field_messages(exc)]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The request body is not a valid query",
        detail=f"{first['field']}: {first['message']}",
        errors=errors,
        field=first["field"],
    )


def _framework_refusal(exc: StarletteHTTPException) -> Refusal:
    """The framework's own refusal (an unknown route, a wrong method) as ours, for the audit log."""
    status = HTTPStatus(exc.status_code)
    kind: RefusalKind = next((k for k, s in STATUS.items() if s == status), "bad_request")
    return Refusal(kind, status.phrase, [status.phrase])


InvalidRequestHook = Callable[[Request, list[tuple[str, str]]], Awaitable[None]]
RefusalHook = Callable[[Request, Refusal], Awaitable[None]]


def install(
    app: FastAPI, *, on_invalid: InvalidRequestHook | None = None, on_refusal: RefusalHook | None = None
) -> None:
    """Register the handlers on an app. `on_invalid` hears of every body that failed validation, and
    `on_refusal` of every other refusal not audited where it was raised (`Refusal.audited`) and of the
    framework's own (an unknown route, a wrong method): the app audits both."""

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        response = _validation_response(request, exc)
        if on_invalid is not None:
            assert isinstance(exc, RequestValidationError)
            await on_invalid(request, _field_messages(exc))
        return response

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refusal)
        if on_refusal is not None and not exc.audited:
            await on_refusal(request, exc)
        return refusal_response(exc)

    async def framework(request: Request, exc: Exception) -> JSONResponse:
        # The framework's own refusals (an unknown route, a wrong method) speak the same problem format
        # as ours.
        assert isinstance(exc, StarletteHTTPException)
        status = HTTPStatus(exc.status_code)
        if on_refusal is not None:
            await on_refusal(request, _framework_refusal(exc))
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != status.phrase else None
        return problem(status, status.phrase, detail=detail)

    app.add_exception_handler(Refusal, refused)
    app.add_exception_handler(StarletteHTTPException, framework)
    app.add_exception_handler(RequestValidationError, validation)


def not_found_response() -> JSONResponse:
    """Unknown route."""
    return problem(HTTPStatus.NOT_FOUND, "Not found")
