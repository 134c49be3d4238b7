"""RFC 9457 problem responses: the one module that knows HTTP status codes.

Domain packages raise their own errors; the pipeline turns them into `Refusal`s (auditing each), and the
handlers here render those, authentication failures and request-validation errors as
`application/problem+json` bodies that name the field. Nothing the gateway does on purpose is a 500.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.errors import (
    MalformedRequest,
    OldSizeMismatch,
    OldSizeTooLarge,
    ProofRejected,
    UnknownOrigin,
    UntrustedCheckpoint,
    WitnessError,
)
from gateway.query.spec import field_path
from gateway.refusal import Refusal, RefusalKind

PROBLEM_JSON = "application/problem+json"
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""The largest request body the gateway reads; a larger one is a 413. No legitimate body comes near it (a
withdrawal of 10,000 patients is under 1 MiB): a larger one is refused as it arrives, before it is held,
parsed or its token looked at."""
MAX_LISTED_ERRORS: Final = 20
"""The most errors a 422 lists, the first ones found; `errors_omitted` counts the rest. A body can hold
hundreds of thousands of faults, and listing each would make an answer larger than the body."""
log = logging.getLogger(__name__)

STATUS: dict[RefusalKind, HTTPStatus] = {
    "bad_request": HTTPStatus.UNPROCESSABLE_ENTITY,
    "unauthenticated": HTTPStatus.UNAUTHORIZED,
    "forbidden": HTTPStatus.FORBIDDEN,
    "not_found": HTTPStatus.NOT_FOUND,
    "conflict": HTTPStatus.CONFLICT,
    "precondition_failed": HTTPStatus.PRECONDITION_FAILED,
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
        None,
        description=f"the fields that failed validation, the first {MAX_LISTED_ERRORS} found: `field` and "
        "`message` of each",
    )
    errors_omitted: int | None = Field(
        None, description="how many more fields failed validation than `errors` lists, when it lists fewer"
    )


_PROBLEM_SCHEMA: dict[str, Any] = Problem.model_json_schema()
_ANSWERS: dict[str, HTTPStatus] = {"ok": OK, "accepted": ACCEPTED}


_WORKER_FULL: Final = (
    "the worker serves as many connections as `[server] max_connections` allows; try again shortly"
)
_AUTH_REFUSALS: dict[str, str] = {
    "bad_request": "a parameter or the body is invalid; `field` names where",
    "unauthenticated": "no valid bearer token",
    "forbidden": "the token lacks this endpoint's role",
    "unavailable": "the identity provider, the audit log or a component the answer needs is unavailable, "
    f"or {_WORKER_FULL}",
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


def _problem_answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}


# What any request can be answered before a route sees it (`Guard`, gateway/cli/http_limits.py), and so
# what every operation documents beside its own answers; a 413 only where the operation takes a body.
_ANY_REQUEST: Final = {
    HTTPStatus.REQUEST_TIMEOUT: "the request was not complete `[server] request_timeout_s` after its first "
    "byte; the connection is closed",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "the request line and headers hold more than `[server] "
    "max_header_bytes`; the connection is closed",
    HTTPStatus.SERVICE_UNAVAILABLE: _WORKER_FULL,
}
_BODY_REFUSAL: Final = (
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    f"the request body holds more than {MAX_BODY_BYTES} bytes",
)


def _document_refusals_before_routes(app: FastAPI) -> None:
    """Have the app's OpenAPI page document, on every operation, the refusals a request can get before its
    route runs (`_ANY_REQUEST`; a route's own 503 keeps its description, which names this cause too), and
    on every operation that takes a body the 413 of one too large."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        for item in doc.get("paths", {}).values():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                refusals = dict(_ANY_REQUEST)
                if "requestBody" in operation:
                    refusals[_BODY_REFUSAL[0]] = _BODY_REFUSAL[1]
                for status, description in refusals.items():
                    responses.setdefault(str(int(status)), _problem_answer(description))
                operation["responses"] = dict(sorted(responses.items()))
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def worker_full(max_connections: int) -> Response:
    """The 503 a worker answers to a request on a connection past its `max_connections`
    (gateway.cli.http_limits), before any app runs: a problem, and the connection closes after it."""
    response = problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "Service unavailable",
        detail=f"this worker serves at most {max_connections} connections at once; try again shortly",
    )
    response.headers["connection"] = "close"
    return response


def raw_refusal(refusal: Literal["header_too_large", "request_timeout"], detail: str) -> tuple[int, bytes]:
    """A refusal a connection's protocol writes before any app runs (gateway.cli.http_limits): its status,
    and its header fields, blank line and problem body, to follow the status line and the server's own
    headers. `header_too_large`: 431, the request line and headers are over the limit; `request_timeout`:
    408, the request did not arrive in time. The connection closes after it."""
    status, title = {
        "header_too_large": (HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header fields too large"),
        "request_timeout": (HTTPStatus.REQUEST_TIMEOUT, "Request timeout"),
    }[refusal]
    response = problem(status, title, detail=detail)
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
    return int(status), fields + b"connection: close\r\n\r\n" + response.body


def problem(
    status: HTTPStatus,
    title: str,
    *,
    detail: str | None = None,
    bearer_error: str | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json response. A 401, and a 403 with a `bearer_error`, carry the Bearer challenge of RFC
    6750 §3, with that error code (`invalid_token`, `insufficient_scope`) when one is given."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": int(status)}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extensions.items() if v is not None})
    headers = None
    if status == HTTPStatus.UNAUTHORIZED or bearer_error is not None:
        challenge = 'Bearer realm="fedgate"' + (f', error="{bearer_error}"' if bearer_error else "")
        headers = {"WWW-Authenticate": challenge}
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
        bearer_error=refusal.bearer_error,
    )


# The routes whose body is a query spec (`gateway.query.QuerySpec`). Pydantic's locations there carry the
# spec's union tags ("count.filters.condition.value"), which `field_path` removes to give the path into the
# spec that docs/queries.md promises ("filters.value"). Other bodies keep pydantic's dotted location: the
# audit log's `field` label admits no brackets ("patients.1", not "patients[1]").
_QUERY_SPEC_BODIES: Final = frozenset({("POST", "/v1/queries")})
_QUERY_SPEC_TITLE: Final = "The request body is not a valid query"
_TITLES: Final = {
    "body": "The request body is not valid",
    "query": "A query parameter is not valid",
    "path": "A path parameter is not valid",
    "header": "A header is not valid",
    "cookie": "A cookie is not valid",
}
_MIXED_TITLE: Final = "The request is not valid"
# When a value matches no member of a union, pydantic reports one error per member, each located at the
# value plus the member's name: a scalar type last ("levels.1.bool", "levels.1.str"), a container type in
# brackets before its own items ("value.list[union[bool,str]].0.str"). A field can have such a name too (a
# Kaplan-Meier spec's `params.time`), so a name counts as a member's only where errors give two different
# such names at one place.
_SCALAR_TYPES: Final = frozenset({"bool", "int", "float", "str", "bytes", "date", "time", "datetime",
                                  "timedelta", "decimal", "uuid", "url"})  # fmt: skip
# Errors whose last location item is a key the model declares or the client sent, whatever its name.
_NAMED_KEY_ERRORS: Final = frozenset({"missing", "extra_forbidden"})
_TAG_ERRORS: Final = frozenset({"union_tag_invalid", "union_tag_not_found"})
_Location = tuple[int | str, ...]


def _member_like(error: Mapping[str, Any]) -> list[int]:
    """The positions in the error's location whose item could name a union member."""
    loc = error.get("loc", ())
    end = len(loc) - 1 if error.get("type") in _NAMED_KEY_ERRORS else len(loc)
    return [
        k
        for k in range(1, end)
        if isinstance(loc[k], str)
        and ("[" in loc[k] or loc[k] in _SCALAR_TYPES or loc[k].startswith("constrained-"))
    ]


def _union_places(errors: Sequence[Mapping[str, Any]]) -> set[_Location]:
    """The locations at which the errors name two or more union members."""
    named: dict[_Location, set[str]] = defaultdict(set)
    for error in errors:
        loc = tuple(error.get("loc", ()))
        for k in _member_like(error):
            named[loc[:k]].add(str(loc[k]))
    return {place for place, names in named.items() if len(names) > 1}


def _field(error: Mapping[str, Any], spec_body: bool, unions: set[_Location]) -> tuple[str, str]:
    """Where a validation error is (`body`, `query`, `path`, `header` or `cookie`) and the field at fault
    as the client wrote it: a parameter by its name (`hours`), a body field by its path, `body` for the
    body as a whole."""
    loc: _Location = tuple(error.get("loc") or ("body",))
    where = str(loc[0])
    kind = error.get("type")
    if kind == "json_invalid":
        return where, where  # the location is an offset into the text, not a field
    members = {k for k in _member_like(error) if loc[:k] in unions}
    items = [item for k, item in enumerate(loc) if k > 0 and k not in members]
    if kind == "extra_forbidden" and items and not _FIELD_NAME.match(str(items[-1])):
        # A key no model has, and not even shaped as a field name: it may be what a caller pasted (a name,
        # a record number), which the problem and the audit log would otherwise repeat.
        items[-1] = "(unknown field)"
    if kind in _TAG_ERRORS:
        # The discriminator is missing or unknown: pydantic locates the error at the object, and names
        # the discriminator's field (quoted) only in the context.
        discriminator = str((error.get("ctx") or {}).get("discriminator", ""))
        if len(discriminator) > 2 and discriminator[0] == discriminator[-1] == "'":
            items.append(discriminator[1:-1])
    path = field_path(tuple(items)) if where == "body" and spec_body else ".".join(map(str, items))
    return where, path or where


def _is_query_spec_body(request: Request) -> bool:
    return (request.method, getattr(request.scope.get("route"), "path", None)) in _QUERY_SPEC_BODIES


_FIELD_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _faults(exc: RequestValidationError, spec_body: bool) -> tuple[list[tuple[str, str, str]], int]:
    """(where, field, message) of each of the first `MAX_LISTED_ERRORS` errors of a request, and how many
    errors there were."""
    errors = exc.errors()
    # A union's members are reported one after another, far fewer of them than MAX_LISTED_ERRORS: errors
    # as many again past the listed ones show every member named at a listed error's place.
    unions = _union_places(errors[: 2 * MAX_LISTED_ERRORS])
    out = []
    for err in errors[:MAX_LISTED_ERRORS]:
        where, field = _field(err, spec_body, unions)
        # Pydantic's message may quote the offending input; the field and the rule are enough. A rule of
        # ours comes prefixed with pydantic's "Value error, ", which says nothing to the client.
        if err.get("type") == "union_tag_invalid":  # "Input tag 'Hans Mueller' found using 'kind' …"
            expected = str((err.get("ctx") or {}).get("expected_tags", "")).replace("'", "")
            message = f"unknown {field.rsplit('.', 1)[-1]}; expected one of {expected}"
        else:
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append((where, field, message))
    return out, len(errors)


def _validation_title(wheres: set[str], spec_body: bool) -> str:
    """Names the part of the request that is invalid, when the errors are all in one part."""
    if len(wheres) != 1:
        return _MIXED_TITLE
    (where,) = wheres
    if where == "body" and spec_body:
        return _QUERY_SPEC_TITLE
    return _TITLES.get(where, _MIXED_TITLE)


def _validation_response(faults: list[tuple[str, str, str]], found: int, spec_body: bool) -> JSONResponse:
    """The 422 of the listed `faults` of the `found` errors."""
    errors = [{"field": field, "message": message} for _where, field, message in faults]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    omitted = max(found - len(errors), 0)
    more = f" (and {omitted} more error{'s' if omitted > 1 else ''})" if omitted else ""
    return problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        _validation_title({where for where, _field, _message in faults}, spec_body),
        detail=f"{first['field']}: {first['message']}{more}",
        errors=errors,
        errors_omitted=omitted or None,
        field=first["field"],
    )


def _framework_title(status: HTTPStatus) -> str:
    return _FRAMEWORK_TITLE.get(status, status.phrase)


def _framework_refusal(exc: StarletteHTTPException) -> Refusal:
    """The framework's own refusal (an unknown route, a wrong method) as ours, for the audit log."""
    status = HTTPStatus(exc.status_code)
    kind: RefusalKind = next((k for k, s in STATUS.items() if s == status), "bad_request")
    return Refusal(kind, _framework_title(status), [_framework_title(status)])


_BODY_TOO_LARGE: Final = "Request body too large"
# One title for a refusal whichever way it came (a 413 of a declared length from `Guard`, of a chunked body
# through the framework's handler), so that the audit log names it one way.
_FRAMEWORK_TITLE: Final = {HTTPStatus.REQUEST_ENTITY_TOO_LARGE: _BODY_TOO_LARGE}
_FRAMEWORK_DETAIL: Final = {
    HTTPStatus.NOT_FOUND: "no such route; the API is described at /docs and /openapi.json",
    HTTPStatus.METHOD_NOT_ALLOWED: "this route does not take that method; the Allow header lists its methods",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: f"a request body may hold at most {MAX_BODY_BYTES} bytes",
}

_UNPARSED_BODY: Final = {
    "type": "json_invalid",
    "loc": ("body",),
    "msg": "the body cannot be read as JSON (its encoding, a number's size or its nesting)",
    "input": None,
}

InvalidRequestHook = Callable[[Request, list[tuple[str, str]]], Awaitable[None]]
RefusalHook = Callable[[Request, Refusal], Awaitable[None]]
AuthorizeHook = Callable[[Request], Awaitable[None]]


def install(
    app: FastAPI,
    *,
    on_invalid: InvalidRequestHook | None = None,
    on_refusal: RefusalHook | None = None,
    authorize: AuthorizeHook | None = None,
) -> None:
    """Register the handlers on an app. `on_invalid` hears of every body or parameter that failed
    validation (the field, named as the problem names it, and the message of each error the problem
    lists), and `on_refusal` of every other refusal not audited where it was raised (`Refusal.audited`)
    and of the framework's own (an unknown route, a wrong method): the app audits both. `authorize` runs
    before a validation failure is answered, so that a request whose body was refused before the route's
    role check ran (a body that is not JSON) is refused as unauthenticated when it is, not told about its
    body. The app's OpenAPI page documents the refusals a request can get before any route runs
    (`_document_refusals_before_routes`)."""

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if authorize is not None:
            try:
                await authorize(request)
            except Refusal as refusal:
                return await refused(request, refusal)
        spec_body = _is_query_spec_body(request)
        faults, found = _faults(exc, spec_body)
        if on_invalid is not None:
            await on_invalid(request, [(field, message) for _where, field, message in faults])
        return _validation_response(faults, found, spec_body)

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refusal)
        if on_refusal is not None and not exc.audited:
            await on_refusal(request, exc)
        return refusal_response(exc)

    async def framework(request: Request, exc: Exception) -> JSONResponse:
        # The framework's own refusals (an unknown route, a wrong method) speak the same problem format
        # as ours.
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == HTTPStatus.BAD_REQUEST:
            # FastAPI's answer to a body it read but could not parse as JSON for a reason other than its
            # syntax (bytes that are no UTF-8, an integer of more digits than Python converts, nesting past
            # the recursion limit): the body is invalid, as a body of bad syntax is.
            return await validation(request, RequestValidationError([_UNPARSED_BODY]))
        status = HTTPStatus(exc.status_code)
        if on_refusal is not None:
            await on_refusal(request, _framework_refusal(exc))
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != status.phrase else None
        response = problem(status, _framework_title(status), detail=detail or _FRAMEWORK_DETAIL.get(status))
        for name, value in (exc.headers or {}).items():  # a 405's Allow
            response.headers[name] = value
        return response

    app.add_exception_handler(Refusal, refused)
    app.add_exception_handler(StarletteHTTPException, framework)
    app.add_exception_handler(RequestValidationError, validation)
    _document_refusals_before_routes(app)


UnexpectedHook = Callable[[Request, Exception], Awaitable[None]]


class Guard:
    """The outer guard of an app (pure ASGI, outside its routes and handlers).

    - A body declared larger than `MAX_BODY_BYTES` is refused (413) before any of it is read, and
      reported to `on_refusal`; a larger body sent in chunks is refused once that many bytes have
      arrived (FastAPI passes the HTTPException raised while it reads the body to the handlers).
    - An exception nothing else took ends as a 500 problem, is logged by its class alone (its message can
      quote what was being processed: a stored value, a statement's parameters) and is reported to
      `on_error`, which audits it. Nothing reaches the server's own error log, which would print the
      message and its traceback."""

    def __init__(
        self, app: ASGIApp, on_error: UnexpectedHook | None = None, on_refusal: RefusalHook | None = None
    ) -> None:
        self.app = app
        self.on_error = on_error
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            refusal = Refusal("bad_request", _BODY_TOO_LARGE, stage="validate")
            if self.on_refusal is not None:
                await self.on_refusal(Request(scope), refusal)
            too_large = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            await problem(too_large, refusal.title, detail=_FRAMEWORK_DETAIL[too_large])(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise StarletteHTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return message

        try:
            # A declared length is held to by the server itself; only a chunked body is counted here.
            await self.app(scope, receive if declared else limited, send)
        except Exception as exc:  # noqa: BLE001 - the guard of last resort, by design
            log.error(
                "%s %s failed unexpectedly (%s)", scope.get("method"), _route(scope), type(exc).__name__
            )
            if self.on_error is not None:
                try:
                    await self.on_error(Request(scope), exc)
                except Exception as failed:  # noqa: BLE001 - the answer below must still go out
                    log.error("the unexpected failure could not be audited (%s)", type(failed).__name__)
            reason = "the gateway failed unexpectedly; nothing was released"
            # The send is not watched (a wrapper on every request's path): a response already begun
            # refuses a second start, and then the connection is left to close.
            with contextlib.suppress(Exception):
                await problem(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal error", detail=reason)(
                    scope, receive, send
                )


def _route(scope: Scope) -> str:
    """The matched route's template (`/v1/queries/{request_id}`), never the path with its values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(no route)"


def not_found_response() -> JSONResponse:
    """Unknown route."""
    return problem(HTTPStatus.NOT_FOUND, "Not found")
