"""The researcher's federation client: one coordinator, the same methods as `Gateway`, pooled results.

    from gateway.client import Federation
    fed = Federation("https://fedgate.site-de.example", token=my_oidc_access_token)
    result = fed.crosstab("cohort", "DSA-2026-014", purpose="DUO:0000006", group_by=["sex", "smoking"])
    result.frame      # the pooled table (suppressed entries are NA with a `suppressed` flag)
    result.sites      # one row per target site: status, reasons, request id, duration
    result.covered    # the sites whose answers the pooled table covers

Sites that denied, timed out or could not be reached are in `sites` with their reasons; the call raises only
when the coordinator itself refuses (the same `GatewayError` family as `Gateway`). A federated query does not
wait for stewards: a site whose steward must decide is in `sites` as `approval_pending` with its request id,
and `wait=` or `poll_every=` raise a TypeError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd

from gateway.client import _KindClient, _purpose, result_frame
from gateway.federation.glm_fit import GlmFit

SITE_COLUMNS = ["site", "status", "reasons", "request_id", "duration_ms"]
WAITING_ARGUMENTS = ("wait", "poll_every")
"""`Gateway`'s arguments for a steward's decision, which a federated query does not take."""


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


class Federation(_KindClient[FederatedResult]):
    """A client of a coordinating gateway for one researcher token; each kind returns a FederatedResult."""

    unreachable = "Coordinator unreachable"

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
        super().__init__(coordinator_url, token, timeout=http_timeout, transport=transport)
        self.sites = list(sites) if sites is not None else None
        self.timeout_s = timeout_s

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
        table when a site refused. A fit over rows under a publication moratorium (DUO:0000024) has
        `publication_moratorium_until`, the latest such day of its sites (YYYY-MM-DD; None when no site is
        under one), as each such site's entry of `sites` has its own: the fit may not be published
        before it."""
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
        _, data = self._send("POST", "/v1/federated-glm", json=body)
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
        _, data = self._send("POST", "/v1/federated-queries", json=body)
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
        for name in WAITING_ARGUMENTS:
            if name in options:
                # The spec refuses unknown fields (a 422 "Extra inputs are not permitted"); say why here.
                raise TypeError(
                    f"Federation.{kind}() got an unexpected keyword argument {name!r}: a federated query "
                    "does not wait for stewards; a site that needs one is a row of `sites` with status "
                    "approval_pending and its request_id, to collect with Gateway(site_url).wait"
                )
        spec = {"dataset": dataset, "agreement": agreement, "purpose": _purpose(purpose), "kind": kind}
        return self.query({**spec, **options})
