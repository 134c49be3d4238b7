"""The researcher's Python client: one `Gateway` per site, one method per query kind, pandas results.

    from gateway.client import Gateway
    site = Gateway("https://fedgate.site-de.example", token=my_oidc_access_token)
    table = site.crosstab("cohort", "DSA-2026-014", purpose="DUO:0000006", group_by=["age_band", "sex"])

A denial raises `QueryDenied` carrying the policy's reasons; a query that policy sends to a steward raises
`ApprovalPending` with its request id, unless `wait=` seconds are given, in which case the client polls.

The token goes only over https: a plain http:// URL is refused unless it names a loopback address (the
gateway's own rule for the URLs it is configured with), or the caller passes `allow_insecure_http=True`.
An answer that is not what the gateway sends raises `GatewayError` ("Unexpected answer from the gateway");
a transport failure raises `GatewayUnavailable` saying why in a few words (never with the token). Every
exception of the client pickles and copies with its attributes (a `ProcessPoolExecutor` hands it back whole).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import socket
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Self, TypeAlias, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionDtype

from gateway.problems import ACCEPTED, STATUS
from gateway.settings import _is_loopback


def _restore_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """An exception of `cls` with its message arguments and attributes, its constructor not called again."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ClientException(Exception):
    """What every exception of the client is: pickled (a process pool's worker hands it to its caller) and
    copied with all its attributes, whatever its constructor takes."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_exception, (type(self), self.args, self.__dict__))


class ConvergenceWarning(UserWarning):
    """A federated GLM fit stopped at its iteration limit before its deviance settled (`converged` is False):
    its estimates and standard errors are not the maximum-likelihood ones."""


class GatewayError(ClientException):
    """A gateway refused or failed; `status`, `reasons` and the RFC 9457 `problem` say why."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.reasons: list[str] = _reasons(problem)
        self.field: str | None = _text(problem.get("field"))
        self.request_id: str | None = _text(problem.get("request_id"))
        detail = "; ".join(self.reasons) or str(problem.get("detail") or "")
        title = problem.get("title")
        title = str(title) if title not in (None, "") else "error"
        super().__init__(f"{title} ({status}){': ' + detail if detail else ''}")


class AuthenticationFailed(GatewayError):
    """401: the token is missing, expired or not accepted by this gateway."""


class QueryDenied(GatewayError):
    """403: policy or disclosure control refused; `reasons` cite the clause or rule."""


class QueryInvalid(GatewayError):
    """422: the query spec is invalid; `field` names where, `reasons` each fault as "field: message"."""


class NotFound(GatewayError):
    """404: no such dataset or request."""


class RepeatLimitReached(GatewayError):
    """429: the agreement's limit on asking the identical query was reached."""


class GatewayUnavailable(GatewayError):
    """503 or a transport failure: nothing was released."""


class ApprovalPending(ClientException):
    """Policy sent the query to a steward; poll `Gateway.result(request_id)` or pass `wait=`."""

    def __init__(self, request_id: str, reasons: list[str]) -> None:
        self.request_id = request_id
        self.reasons = reasons
        super().__init__(f"query {request_id} awaits a steward's approval: {'; '.join(reasons)}")


class ApprovalRejected(ClientException):
    """A steward rejected the query, or it was refused when it ran after approval."""

    def __init__(self, request_id: str, status: str, reasons: list[str]) -> None:
        self.request_id = request_id
        self.status = status
        self.reasons = reasons
        super().__init__(f"query {request_id} was {status}: {'; '.join(reasons)}")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _reasons(problem: Mapping[str, Any]) -> list[str]:
    """The problem's `reasons`; a validation problem has none but lists `errors`, each as "field: message".
    A refusal stays one whatever else its document holds: one reason given as a string is that reason."""
    reasons = problem.get("reasons")
    if isinstance(reasons, str) and reasons:
        return [reasons]
    if isinstance(reasons, list) and reasons:
        return [str(r) for r in reasons]
    errors = problem.get("errors")
    if not isinstance(errors, list):
        return []
    out = []
    for error in errors:
        if isinstance(error, Mapping):
            where, message = error.get("field"), error.get("message")
            out.append(f"{where}: {message}" if where else str(message))
        else:
            out.append(str(error))
    return out


_ERRORS: dict[int, type[GatewayError]] = {
    int(STATUS["unauthenticated"]): AuthenticationFailed,
    int(STATUS["forbidden"]): QueryDenied,
    int(STATUS["not_found"]): NotFound,
    int(STATUS["bad_request"]): QueryInvalid,
    int(STATUS["limit"]): RepeatLimitReached,
    int(STATUS["unavailable"]): GatewayUnavailable,
}


# -- what the gateway's answers hold -------------------------------------------------------------------------
# Every 2xx body is checked here before any of it is read, so a broken or foreign answer (a proxy, another
# version) raises GatewayError("Unexpected answer from the gateway …") naming the member, not a KeyError.

_UNEXPECTED: Final = "Unexpected answer from the gateway"
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_day(value: Any) -> bool:
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


_Kind = tuple[str, Callable[[Any], bool]]
_IS_TEXT: Final[_Kind] = ("a string", lambda v: isinstance(v, str))
_IS_TEXTS: Final[_Kind] = (
    "a list of strings",
    lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
)
_IS_OBJECT: Final[_Kind] = ("an object", lambda v: isinstance(v, dict))
_IS_OBJECTS: Final[_Kind] = (
    "a list of objects",
    lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
)
_IS_NUMBER: Final[_Kind] = ("a number", _is_number)
_IS_NUMBERS: Final[_Kind] = (
    "a list of numbers",
    lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
)
_IS_MATRIX: Final[_Kind] = (
    "a list of lists of numbers",
    lambda v: isinstance(v, list) and all(_IS_NUMBERS[1](row) for row in v),
)
_IS_WHOLE: Final[_Kind] = ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
_IS_FLAG: Final[_Kind] = ("true or false", lambda v: isinstance(v, bool))
_IS_DAY: Final[_Kind] = ("a day written YYYY-MM-DD", _is_day)
_MORATORIUM: Final = "publication_moratorium_until"

# Each answer's members: (what it must be, whether it must be there). An optional member may be null.
_ANSWERS: Final[dict[str, dict[str, tuple[_Kind, bool]]]] = {
    # 202 to a submitted query: a steward decides.
    "pending": {"request_id": (_IS_TEXT, True), "reasons": (_IS_TEXTS, False)},
    # A request's state; a released one is also a "released" answer.
    "state": {"status": (_IS_TEXT, True), "request_id": (_IS_TEXT, False), "reasons": (_IS_TEXTS, False)},
    "released": {
        "rows": (_IS_OBJECTS, True),
        "columns": (_IS_TEXTS, False),
        "kind": (_IS_TEXT, False),
        "status": (_IS_TEXT, False),
        "request_id": (_IS_TEXT, False),
        "result_hash": (_IS_TEXT, False),
        "disclosure": (_IS_OBJECT, False),
        "policy": (_IS_OBJECT, False),
        _MORATORIUM: (_IS_DAY, False),
    },
    "policy": {_MORATORIUM: (_IS_DAY, False)},
    "federated": {"sites": (_IS_OBJECTS, True), "covered": (_IS_TEXTS, False)},
    "federated_site": {
        "site": (_IS_TEXT, True),
        "status": (_IS_TEXT, True),
        "reasons": (_IS_TEXTS, False),
        "request_id": (_IS_TEXT, False),
        "duration_ms": (_IS_NUMBER, False),
        _MORATORIUM: (_IS_DAY, False),
    },
    "glm": {
        "parameters": (_IS_TEXTS, True),
        "family": (_IS_TEXT, True),
        "coefficients": (_IS_NUMBERS, True),
        "covariance": (_IS_MATRIX, True),
        "scale": (_IS_NUMBER, True),
        "deviance": (_IS_NUMBER, True),
        "pearson_chi2": (_IS_NUMBER, True),
        "nobs": (_IS_WHOLE, True),
        "iterations": (_IS_WHOLE, True),
        "converged": (_IS_FLAG, True),
        "sites": (_IS_OBJECTS, False),
        _MORATORIUM: (_IS_DAY, False),
    },
    "glm_site": {
        "site": (_IS_TEXT, True),
        "status": (_IS_TEXT, False),
        "reasons": (_IS_TEXTS, False),
        _MORATORIUM: (_IS_DAY, False),
    },
    "glm_stopped": {
        "iteration": (_IS_WHOLE, True),
        "reasons": (_IS_TEXTS, False),
        "sites": (_IS_OBJECTS, False),
    },
    "glm_stopped_site": {
        "site": (_IS_TEXT, True),
        "status": (_IS_TEXT, False),
        "reasons": (_IS_TEXTS, False),
    },
}
# The answers whose members hold others: (member, the answer each of its objects is).
_NESTED: Final[dict[str, tuple[str, str]]] = {
    "released": ("policy", "policy"),
    "federated": ("sites", "federated_site"),
    "glm": ("sites", "glm_site"),
    "glm_stopped": ("sites", "glm_stopped_site"),
}


def _unexpected(status: int, detail: str) -> GatewayError:
    """The error of an answer that is not what the gateway sends; `detail` names what was wrong."""
    return GatewayError(status, {"title": _UNEXPECTED, "status": status, "detail": detail})


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    for name, (_, test) in (("a number", _IS_NUMBER), ("a string", _IS_TEXT), ("an object", _IS_OBJECT)):
        if test(value):
            return name
    return "a list" if isinstance(value, list) else type(value).__name__


def _check_answer(status: int, body: Any, *answers: str, where: str = "") -> dict[str, Any]:
    """`body` when it is each of `answers` ("released", "glm", …: see `_ANSWERS`); else the GatewayError
    naming the first member that is missing or of the wrong kind (its kind only, never its value)."""
    if not isinstance(body, dict):
        raise _unexpected(status, f"{where.rstrip('.') or 'the body'} is {_what(body)}, not a JSON object")
    for answer in answers:
        for name, ((expected, test), required) in _ANSWERS[answer].items():
            value = body.get(name)
            if value is None:
                if required:
                    raise _unexpected(status, f"`{where}{name}` is missing")
            elif not test(value):
                raise _unexpected(status, f"`{where}{name}` is {_what(value)}, not {expected}")
        if answer in _NESTED:
            member, inner = _NESTED[answer]
            value = body.get(member)
            for i, item in enumerate(
                value if isinstance(value, list) else [value] if value is not None else []
            ):
                _check_answer(
                    status,
                    item,
                    inner,
                    where=f"{where}{member}{f'[{i}]' if isinstance(value, list) else ''}.",
                )
    if "glm" in answers:
        p = len(body["parameters"])
        if (
            len(body["coefficients"]) != p
            or len(body["covariance"]) != p
            or any(len(r) != p for r in body["covariance"])
        ):
            raise _unexpected(
                status, f"`{where}coefficients` and `{where}covariance` do not have one entry per parameter"
            )
    return body


@dataclass(frozen=True)
class QueryResult:
    """A released answer: the table, what disclosure control did, and the raw response."""

    frame: pd.DataFrame
    disclosure: dict[str, Any]
    request_id: str
    result_hash: str
    raw: dict[str, Any] = field(repr=False)


_COUNT: Final = pd.Int64Dtype()
_NUMBER: Final = pd.Float64Dtype()
_FLAG: Final = pd.BooleanDtype()
_TEXT: Final = pd.StringDtype()
_SUPPRESSION: Final[dict[str, ExtensionDtype]] = {"suppressed": _FLAG, "suppression_reason": _TEXT}
_COUNTS: Final[dict[str, ExtensionDtype]] = {"count": _COUNT, **_SUPPRESSION, "margin": _TEXT}
_RESULT_DTYPES: Final[dict[str, dict[str, ExtensionDtype]]] = {
    "count": _COUNTS,
    "crosstab": _COUNTS,
    "histogram": {"bin": _COUNT, "lower": _NUMBER, "upper": _NUMBER, **_COUNTS},
    "summary": {"n": _COUNT, **dict.fromkeys(("mean", "variance", "sum", "sum_sq"), _NUMBER), **_SUPPRESSION},
    # The quantile columns (`q0.5`, and a federation's `q0.5_lower`, `q0.5_upper`) follow `n`: see below.
    "quantiles": {"n": _COUNT, "bin_width": _NUMBER, **_SUPPRESSION},
    "kaplan_meier": {
        **dict.fromkeys(("lower", "upper"), _NUMBER),
        **dict.fromkeys(("at_risk", "events", "censored"), _COUNT),
        # A federation's pooled curve.
        **dict.fromkeys(("survival", "std_err", "ci_lower", "ci_upper"), _NUMBER),
    },
}
# A body without its kind: every result column of any kind, by name.
_ANY_RESULT: Final = {name: dtype for columns in _RESULT_DTYPES.values() for name, dtype in columns.items()}


def result_frame(body: Mapping[str, Any]) -> pd.DataFrame:
    """The released rows as a DataFrame whose column types do not depend on the values (docs/queries.md).

    Counts and `n` are Int64; means, variances, sums, quantiles and bin edges Float64; `suppressed` is
    boolean; `suppression_reason` and `margin` are string. A suppressed or undefined value is NA. Group
    columns keep the values JSON gave them (object): numbers, text, ISO dates, the merged level "(other)",
    and None where a margin sums over the column. Columns are told apart by the body's `kind`; a body
    without one has the columns any kind releases typed by name. A publication moratorium the answer is
    under is the frame's `attrs["publication_moratorium_until"]` (YYYY-MM-DD).
    """
    rows = [row for row in body.get("rows") or [] if isinstance(row, Mapping)]
    columns = [str(c) for c in body.get("columns") or []] or list(dict.fromkeys(k for r in rows for k in r))
    dtypes = _result_dtypes(body.get("kind"), columns)
    index = pd.RangeIndex(len(rows))
    data = {name: _column(name, [row.get(name) for row in rows], dtypes.get(name), index) for name in columns}
    frame = pd.DataFrame(data, index=index, columns=columns)
    policy = body.get("policy")
    # A site's answer carries it in its policy block, a federated answer beside its rows.
    until = (policy if isinstance(policy, Mapping) else body).get("publication_moratorium_until")
    if until:
        frame.attrs["publication_moratorium_until"] = str(until)
    return frame


def _result_dtypes(kind: Any, columns: list[str]) -> dict[str, ExtensionDtype]:
    """The dtype of each result column of a kind's table; group columns are not in it."""
    known = _RESULT_DTYPES.get(kind, _ANY_RESULT) if isinstance(kind, str) else _ANY_RESULT
    dtypes = {name: known[name] for name in columns if name in known}
    if kind == "quantiles" and "n" in columns:
        # No group column may be named `n`, so the groups are the columns before it, and every column
        # after it is a quantile, a bracket end or the bins' width, except the suppression flags.
        after = columns[columns.index("n") + 1 :]
        dtypes.update({name: _NUMBER for name in after if name not in dtypes})
    return dtypes


def _column(name: str, values: list[Any], dtype: ExtensionDtype | None, index: pd.RangeIndex) -> pd.Series:
    if dtype is None:
        return pd.Series(values, index=index, dtype=object)
    try:
        return pd.Series(values, index=index, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"the answer's column {name!r} holds a value that is not {dtype}") from None


R = TypeVar("R")
Values: TypeAlias = "Sequence[Any] | np.ndarray[Any, Any] | pd.Index[Any] | pd.Series[Any]"
"""Edges, probabilities, column names or levels: a list, or a NumPy array or pandas Index or Series."""


class _KindClient(ABC, Generic[R]):
    """What both clients share: the HTTP session, error mapping, and one method per analysis kind."""

    unreachable = "Gateway unreachable"

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        """`base_url` must be https://, or plain http:// on a loopback address (127.0.0.1, ::1, localhost):
        the token would cross the network unencrypted otherwise. `allow_insecure_http=True` lifts that rule
        (a test network's gateway). The token must be printable ASCII without blanks, as a bearer token is."""
        url = _base_url(base_url, allow_insecure_http=allow_insecure_http)
        try:
            self._http = httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {_bearer(token)}"},
                timeout=timeout,
                transport=transport,
            )
        except httpx.InvalidURL as exc:
            raise ValueError(f"the gateway's URL is not valid: {exc}") from None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _kind(self, kind: str, dataset: str, agreement: str, purpose: Any, options: dict[str, Any]) -> R:
        """Ask one kind of question; each client says how its answer comes back."""

    def _ask(self, kind: str, dataset: str, agreement: str, purpose: Any, options: dict[str, Any]) -> R:
        if "group_by" in options:
            options = {**options, "group_by": _group_by(options["group_by"])}
        return self._kind(kind, dataset, agreement, purpose, options)

    def _send(self, method: str, path: str, json: Any = None) -> tuple[int, dict[str, Any]]:
        """The status and JSON object of a 2xx answer; anything else raises a `GatewayError` of its status.
        A JSON body's NumPy and pandas values are sent as the Python values they hold."""
        try:
            response = self._http.request(method, path, json=None if json is None else _plain(json))
        except httpx.HTTPError as exc:
            cause = _transport_cause(exc, self._http.base_url)
            raise GatewayUnavailable(0, {"title": self.unreachable, "detail": cause}) from None
        status = response.status_code
        try:
            body = response.json()
            readable = True
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's parser goes
            body, readable = None, False
        if not response.is_success:
            # A redirect (the client follows none: a wrong base URL) or a proxy's page is no problem document.
            problem = body if _is_problem(body) else _not_a_problem(response)
            raise _ERRORS.get(status, GatewayError)(status, problem)
        if not readable:
            raise _unexpected(status, "the body is not readable JSON")
        return status, _check_answer(status, body)

    # -- one method per kind -------------------------------------------------------------------------------

    def count(self, dataset: str, agreement: str, purpose: Any, **options: Any) -> R:
        """Counts (optionally grouped) of the rows matching `filters`."""
        return self._ask("count", dataset, agreement, purpose, options)

    def crosstab(
        self, dataset: str, agreement: str, purpose: Any, group_by: str | Values, **options: Any
    ) -> R:
        """A cross-tabulation with margins; `group_by` is one column name or a list of them."""
        return self._ask("crosstab", dataset, agreement, purpose, {**options, "group_by": group_by})

    def summary(self, dataset: str, agreement: str, purpose: Any, column: str, **options: Any) -> R:
        """n, mean and variance of a column per group (pooled exactly from n, Σx, Σx² when federated)."""
        return self._ask("summary", dataset, agreement, purpose, {**options, "params": {"column": column}})

    def histogram(
        self, dataset: str, agreement: str, purpose: Any, column: str, edges: Values, **options: Any
    ) -> R:
        """Counts per fixed bin."""
        params = {"column": column, "edges": list(edges)}
        return self._ask("histogram", dataset, agreement, purpose, {**options, "params": params})

    def quantiles(
        self, dataset: str, agreement: str, purpose: Any, column: str, probs: Values, **options: Any
    ) -> R:
        """Quantiles of a column per group that passes the cell rule (federated: with proven brackets)."""
        params = {"column": column, "probs": list(probs)}
        return self._ask("quantiles", dataset, agreement, purpose, {**options, "params": params})

    def kaplan_meier(
        self, dataset: str, agreement: str, purpose: Any, time: str, event: str, edges: Values,
        **options: Any,
    ) -> R:  # fmt: skip
        """At risk, events and censorings per released time bin (federated: the pooled survival curve)."""
        params = {"time": time, "event": event, "edges": list(edges)}
        return self._ask("kaplan_meier", dataset, agreement, purpose, {**options, "params": params})


class Gateway(_KindClient[pd.DataFrame]):
    """A client of one site's gateway for one researcher token; each kind returns a DataFrame."""

    # -- the general calls ---------------------------------------------------------------------------------

    def query(
        self, spec: Mapping[str, Any], *, wait: float | None = None, poll_every: float = 1.0
    ) -> QueryResult:
        """Submit a spec; return the released result (polls up to `wait` seconds when a steward decides)."""
        if wait is not None:
            _check_seconds("wait", wait, positive=False)
        _check_seconds("poll_every", poll_every, positive=True)
        status, body = self._send("POST", "/v1/queries", json=dict(spec))
        if status == ACCEPTED:
            _check_answer(status, body, "pending")
            request_id = body["request_id"]
            try:
                _request_path(request_id)
            except ValueError:
                raise _unexpected(status, "`request_id` is not a request id") from None
            if wait is None:
                raise ApprovalPending(request_id, list(body.get("reasons") or []))
            return self.wait(request_id, timeout=wait, poll_every=poll_every)
        return _result(status, _check_answer(status, body, "released"))

    def result(self, request_id: str) -> dict[str, Any]:
        """The current state of a request: pending, released (with its result), refused or rejected."""
        status, body = self._send("GET", _request_path(request_id))
        _check_answer(status, body, "state")
        if body["status"] == "released":
            _check_answer(status, body, "released")
        return body

    def wait(self, request_id: str, *, timeout: float, poll_every: float = 1.0) -> QueryResult:
        """Poll until a steward decided; raise ApprovalPending after `timeout` seconds."""
        _request_path(request_id)
        _check_seconds("timeout", timeout, positive=False)
        _check_seconds("poll_every", poll_every, positive=True)
        deadline = time.monotonic() + timeout
        while True:
            body = self.result(request_id)
            status = body.get("status")
            if status == "released":
                return _result(200, body)
            if status in ("refused", "rejected"):
                raise ApprovalRejected(request_id, str(status), list(body.get("reasons") or []))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApprovalPending(request_id, list(body.get("reasons") or []))
            time.sleep(min(poll_every, remaining))  # the last poll falls on the deadline, not after it

    def _kind(
        self, kind: str, dataset: str, agreement: str, purpose: Any, options: dict[str, Any]
    ) -> pd.DataFrame:
        wait = options.pop("wait", None)
        poll_every = options.pop("poll_every", 1.0)
        spec = {
            "dataset": dataset,
            "agreement": agreement,
            "purpose": _purpose(purpose),
            "kind": kind,
            **options,
        }
        return self.query(spec, wait=wait, poll_every=poll_every).frame


def _frame(status: int, body: dict[str, Any]) -> pd.DataFrame:
    """`result_frame` of a checked answer; a value its column's type cannot hold is an unexpected answer."""
    try:
        return result_frame(body)
    except ValueError as exc:
        raise _unexpected(status, str(exc)) from None


def _base_url(base_url: Any, *, allow_insecure_http: bool) -> str:
    """The gateway's URL without its trailing '/': https://, or plain http:// on a loopback address (the
    rule `gateway.settings` applies to the URLs a gateway is configured with) unless the caller allows it."""
    if not isinstance(base_url, str):
        raise TypeError(f"the gateway's URL must be a string, not {type(base_url).__name__}")
    try:
        parts = urlsplit(base_url.strip())
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            "the gateway's URL must start with https:// and name a host, e.g. https://fedgate.site-de.example"
        )
    if "@" in parts.netloc:
        # httpx would send the login as Basic credentials in place of the bearer token (the message does
        # not repeat it).
        raise ValueError(
            "the gateway's URL must not hold a user name or password (user:password@): the client "
            "authenticates with the token alone"
        )
    if parts.scheme.lower() == "http" and not _is_loopback(host) and not allow_insecure_http:
        raise ValueError(
            f"refusing plain http to {host}: the token would cross the network unencrypted. Use https:// "
            "(plain http only on a loopback address), or pass allow_insecure_http=True on a network you trust"
        )
    return base_url.strip().rstrip("/")


def _bearer(token: Any) -> str:
    """The token as it can go in an Authorization header; the errors never show it."""
    if not isinstance(token, str):
        raise TypeError(f"the token must be a string (an OAuth access token), not {type(token).__name__}")
    if not token:
        raise ValueError("the token is empty")
    if not (token.isascii() and token.isprintable()) or " " in token:
        hint = " (a token read from a file may end in a newline: strip it)" if token != token.strip() else ""
        raise ValueError(f"the token is not a bearer token: it must be printable ASCII without blanks{hint}")
    return token


def _transport_cause(exc: httpx.HTTPError, url: httpx.URL) -> str:
    """Why a request got no answer, in a few words: from the exception's kind and the OS error under it,
    never its message (which can quote the request)."""
    host = url.netloc.decode("ascii", "replace")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "the URL does not start with http:// or https://"
    timeouts: dict[type[Exception], str] = {
        httpx.ConnectTimeout: f"timed out connecting to {host}",
        httpx.ReadTimeout: f"timed out waiting for {host}'s answer",
        httpx.WriteTimeout: f"timed out sending the request to {host}",
        httpx.PoolTimeout: "timed out waiting for a free connection",
    }
    for timeout, cause in timeouts.items():
        if isinstance(exc, timeout):
            return cause
    under: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(under) < 10:
        under.append(seen)
        seen = seen.__cause__ or seen.__context__
    causes: list[tuple[type[BaseException], str]] = [
        (ssl.SSLCertVerificationError, f"TLS certificate verification failed for {host}"),
        (ssl.SSLError, f"the TLS handshake with {host} failed"),
        (socket.gaierror, f"the name {url.host} could not be resolved"),
        (ConnectionRefusedError, f"connection refused by {host}"),
        (ConnectionResetError, f"the connection to {host} was reset"),
        (TimeoutError, f"timed out talking to {host}"),
    ]
    for kind, cause in causes:
        if any(isinstance(e, kind) for e in under):
            return cause
    kinds: list[tuple[type[httpx.HTTPError], str]] = [
        (httpx.ProxyError, "the proxy refused the connection"),
        (httpx.ConnectError, f"could not connect to {host}"),
        (httpx.RemoteProtocolError, f"{host} closed the connection or broke the HTTP protocol"),
        (httpx.ReadError, f"the connection to {host} broke while reading its answer"),
        (httpx.WriteError, f"the connection to {host} broke while sending the request"),
        (httpx.DecodingError, f"{host}'s answer could not be decoded"),
    ]
    for kind, cause in kinds:
        if isinstance(exc, kind):
            return cause
    return f"{type(exc).__name__} talking to {host}"


def _plain(value: Any) -> Any:
    """A request body with NumPy scalars and arrays and pandas Index and Series turned into the Python
    numbers, strings and lists they hold (`np.arange` edges, `df.columns[:2]`, an `np.int64` value)."""
    if isinstance(value, Mapping):
        return {(k.item() if isinstance(k, np.generic) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | pd.Index | pd.Series):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _group_by(group_by: Any) -> Any:
    """One column name is one column (a string is a sequence of letters too); other values go as given."""
    if isinstance(group_by, str):
        return [group_by]
    if isinstance(group_by, Sequence):
        return list(group_by)
    return group_by  # the gateway names the field when it is not a list


def _check_seconds(name: str, value: Any, *, positive: bool) -> None:
    """Refuse a duration before any request: `wait` and `timeout` may be 0 (ask once), `poll_every` not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if positive and not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    if not positive and not value >= 0:  # NaN fails this too
        raise ValueError(f"{name} must be a number of seconds of at least 0, got {value!r}")


def _request_path(request_id: str) -> str:
    """The path of a request's state, its id quoted as one path segment; ValueError for no id or a malformed
    one (nothing a gateway hands out has a slash, a control character or surrounding blanks)."""
    if not isinstance(request_id, str) or not request_id.strip():
        raise ValueError(f"a request id must be a non-empty string, got {request_id!r}")
    if (
        request_id in (".", "..")
        or "/" in request_id
        or request_id != request_id.strip()
        or not request_id.isprintable()
    ):
        raise ValueError(f"{request_id!r} is not a request id")
    return f"/v1/queries/{quote(request_id, safe='')}"


def _is_problem(body: Any) -> bool:
    """Whether a body is an RFC 9457 problem document (a JSON object with at least one of its members)."""
    return isinstance(body, dict) and any(key in body for key in ("type", "title", "status", "detail"))


def _not_a_problem(response: httpx.Response) -> dict[str, Any]:
    """What a refusal without a problem document says: its status line, and where a redirect points."""
    detail = f"HTTP {response.status_code} without a problem document"
    location = response.headers.get("Location")
    if response.is_redirect and location:
        detail += f"; redirected to {location} (is the gateway's URL right?)"
    return {"title": response.reason_phrase or "Unexpected answer", "status": response.status_code,
            "detail": detail}  # fmt: skip


def _purpose(purpose: Any) -> dict[str, Any]:
    """Accept 'DUO:0000006', a list of codes, or the full purpose object."""
    if isinstance(purpose, str):
        return {"duo": [purpose]}
    if isinstance(purpose, Mapping):
        return dict(purpose)
    return {"duo": list(purpose)}


def _result(status: int, body: dict[str, Any]) -> QueryResult:
    """A checked "released" answer as a QueryResult."""
    return QueryResult(
        frame=_frame(status, body),
        disclosure=dict(body.get("disclosure") or {}),
        request_id=str(body.get("request_id")),
        result_hash=str(body.get("result_hash")),
        raw=body,
    )


# Re-exported last: the federation client builds on the names above.
from gateway.client_federation import FederatedResult as FederatedResult  # noqa: E402
from gateway.client_federation import Federation as Federation  # noqa: E402
