"""The researcher's Python client: one `Gateway` per site, one method per query kind, pandas results.

    from gateway.client import Gateway
    site = Gateway("https://fedgate.site-de.example", token=my_oidc_access_token)
    table = site.crosstab("cohort", "DSA-2026-014", purpose="DUO:0000006", group_by=["age_band", "sex"])

A denial raises `QueryDenied` carrying the policy's reasons; a query that policy sends to a steward raises
`ApprovalPending` with its request id, unless `wait=` seconds are given, in which case the client polls.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import pandas as pd
from pandas.api.extensions import ExtensionDtype

from gateway.problems import ACCEPTED, STATUS


class GatewayError(Exception):
    """A gateway refused or failed; `status`, `reasons` and the RFC 9457 `problem` say why."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.reasons: list[str] = _reasons(problem)
        self.field: str | None = problem.get("field")
        self.request_id: str | None = problem.get("request_id")
        detail = "; ".join(self.reasons) or str(problem.get("detail") or "")
        super().__init__(f"{problem.get('title', 'error')} ({status}){': ' + detail if detail else ''}")


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


class ApprovalPending(Exception):
    """Policy sent the query to a steward; poll `Gateway.result(request_id)` or pass `wait=`."""

    def __init__(self, request_id: str, reasons: list[str]) -> None:
        self.request_id = request_id
        self.reasons = reasons
        super().__init__(f"query {request_id} awaits a steward's approval: {'; '.join(reasons)}")


class ApprovalRejected(Exception):
    """A steward rejected the query, or it was refused when it ran after approval."""

    def __init__(self, request_id: str, status: str, reasons: list[str]) -> None:
        self.request_id = request_id
        self.status = status
        self.reasons = reasons
        super().__init__(f"query {request_id} was {status}: {'; '.join(reasons)}")


def _reasons(problem: Mapping[str, Any]) -> list[str]:
    """The problem's `reasons`; a validation problem has none but lists `errors`, each as "field: message"."""
    reasons = problem.get("reasons")
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
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

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

    def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """The status and JSON object of a 2xx answer; anything else raises a `GatewayError` of its status."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(0, {"title": self.unreachable, "detail": type(exc).__name__}) from None
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            # A redirect (the client follows none: a wrong base URL) or a proxy's page is no problem document.
            problem = body if _is_problem(body) else _not_a_problem(response)
            raise _ERRORS.get(status, GatewayError)(status, problem)
        if not isinstance(body, dict):
            raise GatewayError(status, {"title": "Unexpected answer", "detail": "the body is no JSON object"})
        return status, body

    # -- one method per kind -------------------------------------------------------------------------------

    def count(self, dataset: str, agreement: str, purpose: Any, **options: Any) -> R:
        """Counts (optionally grouped) of the rows matching `filters`."""
        return self._ask("count", dataset, agreement, purpose, options)

    def crosstab(
        self, dataset: str, agreement: str, purpose: Any, group_by: str | Sequence[str], **options: Any
    ) -> R:
        """A cross-tabulation with margins; `group_by` is one column name or a list of them."""
        return self._ask("crosstab", dataset, agreement, purpose, {**options, "group_by": group_by})

    def summary(self, dataset: str, agreement: str, purpose: Any, column: str, **options: Any) -> R:
        """n, mean and variance of a column per group (pooled exactly from n, Σx, Σx² when federated)."""
        return self._ask("summary", dataset, agreement, purpose, {**options, "params": {"column": column}})

    def histogram(
        self, dataset: str, agreement: str, purpose: Any, column: str, edges: Sequence[float], **options: Any
    ) -> R:
        """Counts per fixed bin."""
        params = {"column": column, "edges": list(edges)}
        return self._ask("histogram", dataset, agreement, purpose, {**options, "params": params})

    def quantiles(
        self, dataset: str, agreement: str, purpose: Any, column: str, probs: Sequence[float], **options: Any
    ) -> R:
        """Quantiles of a column per group that passes the cell rule (federated: with proven brackets)."""
        params = {"column": column, "probs": list(probs)}
        return self._ask("quantiles", dataset, agreement, purpose, {**options, "params": params})

    def kaplan_meier(
        self, dataset: str, agreement: str, purpose: Any, time: str, event: str, edges: Sequence[float],
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
            if wait is None:
                raise ApprovalPending(body["request_id"], list(body.get("reasons") or []))
            return self.wait(body["request_id"], timeout=wait, poll_every=poll_every)
        return _result(body)

    def result(self, request_id: str) -> dict[str, Any]:
        """The current state of a request: pending, released (with its result), refused or rejected."""
        _, body = self._send("GET", _request_path(request_id))
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
                return _result(body)
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


def _result(body: dict[str, Any]) -> QueryResult:
    return QueryResult(
        frame=result_frame(body),
        disclosure=dict(body.get("disclosure") or {}),
        request_id=str(body.get("request_id")),
        result_hash=str(body.get("result_hash")),
        raw=body,
    )


# Re-exported last: the federation client builds on the names above.
from gateway.client_federation import FederatedResult as FederatedResult  # noqa: E402
from gateway.client_federation import Federation as Federation  # noqa: E402
