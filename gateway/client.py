"""The researcher's Python client: one `Gateway` per site, one method per query kind, pandas results.

    from gateway.client import Gateway
    site = Gateway("https://fedgate.site-de.example", token=my_oidc_access_token)
    table = site.crosstab("cohort", "DSA-2026-014", purpose="DUO:0000006", group_by=["age_band", "sex"])

A denial raises `QueryDenied` carrying the policy's reasons; a query that policy sends to a steward raises
`ApprovalPending` with its request id, unless `wait=` seconds are given, in which case the client polls.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

import httpx
import pandas as pd

from gateway.problems import ACCEPTED, STATUS


class GatewayError(Exception):
    """A gateway refused or failed; `status`, `reasons` and the RFC 9457 `problem` say why."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.reasons: list[str] = [str(r) for r in problem.get("reasons") or []]
        self.field: str | None = problem.get("field")
        self.request_id: str | None = problem.get("request_id")
        detail = "; ".join(self.reasons) or str(problem.get("detail") or "")
        super().__init__(f"{problem.get('title', 'error')} ({status}){': ' + detail if detail else ''}")


class AuthenticationFailed(GatewayError):
    """401: the token is missing, expired or not accepted by this gateway."""


class QueryDenied(GatewayError):
    """403: policy or disclosure control refused; `reasons` cite the clause or rule."""


class QueryInvalid(GatewayError):
    """422: the query spec is invalid; `field` names where."""


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


def result_frame(body: Mapping[str, Any]) -> pd.DataFrame:
    """The released rows as a DataFrame; suppressed values are missing (NA) with a `suppressed` flag."""
    columns = list(body.get("columns") or [])
    frame = pd.DataFrame.from_records(list(body.get("rows") or []), columns=columns or None)
    return frame.convert_dtypes()


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

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(0, {"title": self.unreachable, "detail": type(exc).__name__}) from None
        if response.is_error:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason_phrase}
            raise _ERRORS.get(response.status_code, GatewayError)(response.status_code, problem)
        return response

    # -- one method per kind -------------------------------------------------------------------------------

    def count(self, dataset: str, agreement: str, purpose: Any, **options: Any) -> R:
        """Counts (optionally grouped) of the rows matching `filters`."""
        return self._kind("count", dataset, agreement, purpose, options)

    def crosstab(
        self, dataset: str, agreement: str, purpose: Any, group_by: Sequence[str], **options: Any
    ) -> R:
        """A cross-tabulation with margins."""
        return self._kind("crosstab", dataset, agreement, purpose, {**options, "group_by": list(group_by)})

    def summary(self, dataset: str, agreement: str, purpose: Any, column: str, **options: Any) -> R:
        """n, mean and variance of a column per group (pooled exactly from n, Σx, Σx² when federated)."""
        return self._kind("summary", dataset, agreement, purpose, {**options, "params": {"column": column}})

    def histogram(
        self, dataset: str, agreement: str, purpose: Any, column: str, edges: Sequence[float], **options: Any
    ) -> R:
        """Counts per fixed bin."""
        params = {"column": column, "edges": list(edges)}
        return self._kind("histogram", dataset, agreement, purpose, {**options, "params": params})

    def quantiles(
        self, dataset: str, agreement: str, purpose: Any, column: str, probs: Sequence[float], **options: Any
    ) -> R:
        """Quantiles of a column per group that passes the cell rule (federated: with proven brackets)."""
        params = {"column": column, "probs": list(probs)}
        return self._kind("quantiles", dataset, agreement, purpose, {**options, "params": params})

    def kaplan_meier(
        self, dataset: str, agreement: str, purpose: Any, time: str, event: str, edges: Sequence[float],
        **options: Any,
    ) -> R:  # fmt: skip
        """At risk, events and censorings per released time bin (federated: the pooled survival curve)."""
        params = {"time": time, "event": event, "edges": list(edges)}
        return self._kind("kaplan_meier", dataset, agreement, purpose, {**options, "params": params})


class Gateway(_KindClient[pd.DataFrame]):
    """A client of one site's gateway for one researcher token; each kind returns a DataFrame."""

    # -- the general calls ---------------------------------------------------------------------------------

    def query(
        self, spec: Mapping[str, Any], *, wait: float | None = None, poll_every: float = 1.0
    ) -> QueryResult:
        """Submit a spec; return the released result (polls up to `wait` seconds when a steward decides)."""
        response = self._send("POST", "/v1/queries", json=dict(spec))
        body = response.json()
        if response.status_code == ACCEPTED:
            if wait is None:
                raise ApprovalPending(body["request_id"], list(body.get("reasons") or []))
            return self.wait(body["request_id"], timeout=wait, poll_every=poll_every)
        return _result(body)

    def result(self, request_id: str) -> dict[str, Any]:
        """The current state of a request: pending, released (with its result), refused or rejected."""
        data: dict[str, Any] = self._send("GET", f"/v1/queries/{request_id}").json()
        return data

    def wait(self, request_id: str, *, timeout: float, poll_every: float = 1.0) -> QueryResult:
        """Poll until a steward decided; raise ApprovalPending after `timeout` seconds."""
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
