"""The researcher's federation client: one coordinator, the same methods as `Gateway`, pooled results.

    from gateway.client import Federation
    fed = Federation("https://fedgate.site-de.example", token=my_oidc_access_token)
    result = fed.crosstab("cohort", "DSA-2026-014", purpose="DUO:0000006", group_by=["sex", "smoking"])
    result.frame      # the pooled table (suppressed entries are NA with a `suppressed` flag)
    result.sites      # one row per target site: status, reasons, request id, duration
    result.covered    # the sites whose answers the pooled table covers

Sites that denied, timed out or could not be reached are in `sites` with their reasons; the call raises only
when the coordinator itself refuses (the same `GatewayError` family as `Gateway`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd

from gateway.client import _ERRORS, GatewayError, GatewayUnavailable, _purpose, result_frame
from gateway.federation.glm_fit import GlmFit

SITE_COLUMNS = ["site", "status", "reasons", "request_id", "duration_ms"]


class GlmStopped(Exception):
    """A site refused during a federated GLM; `sites` is the per-site table (status, reasons, iteration)."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.iteration = int(body.get("iteration") or 0)
        self.sites = pd.DataFrame.from_records(list(body.get("sites") or []))
        self.reasons = [str(r) for r in body.get("reasons") or []]
        detail = "; ".join(self.reasons)
        super().__init__(f"the federated fit stopped at iteration {self.iteration}: {detail}")


@dataclass(frozen=True)
class FederatedResult:
    """A pooled answer: its table, every target site's status, and the sites it covers."""

    frame: pd.DataFrame
    sites: pd.DataFrame
    covered: list[str]
    disclosure: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class Federation:
    """A client of a coordinating gateway for one researcher token."""

    def __init__(
        self,
        coordinator_url: str,
        token: str,
        *,
        sites: Sequence[str] | None = None,
        timeout_s: float | None = None,
        http_timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.sites = list(sites) if sites is not None else None
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=coordinator_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=http_timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, dataset: str, agreement: str, purpose: Any, **options: Any) -> FederatedResult:
        """Pooled counts (optionally grouped)."""
        return self._kind("count", dataset, agreement, purpose, options)

    def crosstab(
        self, dataset: str, agreement: str, purpose: Any, group_by: Sequence[str], **options: Any
    ) -> FederatedResult:
        """A pooled cross-tabulation with margins."""
        return self._kind("crosstab", dataset, agreement, purpose, {**options, "group_by": list(group_by)})

    def summary(
        self, dataset: str, agreement: str, purpose: Any, column: str, **options: Any
    ) -> FederatedResult:
        """n, mean and variance pooled exactly from every site's n, Σx and Σx²."""
        return self._kind("summary", dataset, agreement, purpose, {**options, "params": {"column": column}})

    def histogram(
        self, dataset: str, agreement: str, purpose: Any, column: str, edges: Sequence[float], **options: Any
    ) -> FederatedResult:
        """Counts per bin summed over the sites."""
        params = {"column": column, "edges": list(edges)}
        return self._kind("histogram", dataset, agreement, purpose, {**options, "params": params})

    def quantiles(
        self, dataset: str, agreement: str, purpose: Any, column: str, probs: Sequence[float], **options: Any
    ) -> FederatedResult:
        """Pooled quantiles, each with the bracket `<q>_lower`..`<q>_upper` it provably lies in."""
        params = {"column": column, "probs": list(probs)}
        return self._kind("quantiles", dataset, agreement, purpose, {**options, "params": params})

    def kaplan_meier(
        self, dataset: str, agreement: str, purpose: Any, time: str, event: str, edges: Sequence[float],
        **options: Any,
    ) -> FederatedResult:  # fmt: skip
        """The pooled survival curve at the bins every site released (gateway.federation.km)."""
        params = {"time": time, "event": event, "edges": list(edges)}
        return self._kind("kaplan_meier", dataset, agreement, purpose, {**options, "params": params})

    def glm(
        self,
        dataset: str,
        agreement: str,
        purpose: Any,
        outcome: str,
        family: str,
        *,
        numeric: Sequence[str] = (),
        categorical: Mapping[str, Sequence[Any]] | None = None,
        offset: str | None = None,
        weights: str | None = None,
        intercept: bool = True,
        max_iterations: int | None = None,
    ) -> GlmFit:
        """A federated GLM (gaussian, binomial, poisson) over the coordinator and its peers.

        `categorical` maps a column to its levels, the first being the reference. Returns a `GlmFit`
        (`params`, `bse`, `conf_int()`, `summary()`, `sites`); raises `GlmStopped` with the per-site
        table when a site refused."""
        model: dict[str, Any] = {"outcome": outcome, "family": family, "numeric": list(numeric),
                                 "categorical": [{"column": c, "levels": list(levels)}
                                                 for c, levels in (categorical or {}).items()],
                                 "offset": offset, "weights": weights, "intercept": intercept}  # fmt: skip
        body: dict[str, Any] = {"dataset": dataset, "agreement": agreement, "purpose": _purpose(purpose),
                                "model": model}  # fmt: skip
        if self.sites is not None:
            body["sites"] = self.sites
        if max_iterations is not None:
            body["max_iterations"] = max_iterations
        data = self._send(body, "/v1/federated-glm")
        if data.get("status") == "stopped":
            raise GlmStopped(data)
        return GlmFit.from_dict(data)

    def query(self, spec: Mapping[str, Any]) -> FederatedResult:
        """Submit a spec (plus optional `sites` and `timeout_s`) to the coordinator."""
        body = dict(spec)
        if self.sites is not None:
            body.setdefault("sites", self.sites)
        if self.timeout_s is not None:
            body.setdefault("timeout_s", self.timeout_s)
        data = self._send(body)
        sites = pd.DataFrame.from_records(list(data.get("sites") or []), columns=SITE_COLUMNS)
        return FederatedResult(
            frame=result_frame(data),
            sites=sites,
            covered=[str(s) for s in data.get("covered") or []],
            disclosure=dict(data.get("disclosure") or {}),
            request_id=str(data.get("request_id")),
            raw=data,
        )

    def _kind(
        self, kind: str, dataset: str, agreement: str, purpose: Any, options: dict[str, Any]
    ) -> FederatedResult:
        spec = {"dataset": dataset, "agreement": agreement, "purpose": _purpose(purpose), "kind": kind}
        return self.query({**spec, **options})

    def _send(self, body: dict[str, Any], path: str = "/v1/federated-queries") -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(
                0, {"title": "Coordinator unreachable", "detail": type(exc).__name__}
            ) from None
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason_phrase}
            raise _ERRORS.get(response.status_code, GatewayError)(response.status_code, problem)
        data: dict[str, Any] = response.json()
        return data
