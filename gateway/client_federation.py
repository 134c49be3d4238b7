"""The researcher's federation client: one coordinator, the same methods as `Gateway`, pooled results.

    from gateway.client import Federation
    fed = Federation("https://fedgate.site-de.example", token=my_oidc_access_token)
    result = fed.crosstab("cohort", "DSA-2026-014", purpose="DUO:0000006", group_by=["sex", "smoking"])
    result.frame      # the pooled table (suppressed entries are NA with a `suppressed` flag)
    result.sites      # one row per target site: status, reasons, request id, duration, moratorium
    result.covered    # the sites whose answers the pooled table covers

Sites that denied, timed out or could not be reached are in `sites` with their reasons; the call raises only
when the coordinator itself refuses (the same `GatewayError` family as `Gateway`). When no site answered,
the result's `status` is `no_site_answered`, its frame is empty and `sites` says why. A federated query does
not wait for stewards: a site whose steward must decide is in `sites` as `approval_pending` with its request
id, and `wait=` or `poll_every=` raise a TypeError. A GLM fit that did not converge warns with
`ConvergenceWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from gateway.client import (
    ClientException,
    ConvergenceWarning,
    Values,
    _check_answer,
    _frame,
    _KindClient,
    _purpose,
)
from gateway.federation.glm_fit import GlmFit

SITE_COLUMNS = ["site", "status", "reasons", "request_id", "duration_ms", "publication_moratorium_until"]
"""The columns `FederatedResult.sites` always has, first; any other a site's entry carries follows them."""
WAITING_ARGUMENTS = ("wait", "poll_every")
"""`Gateway`'s arguments for a steward's decision, which a federated query does not take."""


class GlmStopped(ClientException):
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
    status: str = "released"
    """`released`, or `no_site_answered` (the frame is empty; `sites` says why each site did not answer)."""


class Federation(_KindClient[FederatedResult]):
    """A client of a coordinating gateway for one researcher token; each kind returns a FederatedResult."""

    unreachable = "Coordinator unreachable"

    def __init__(
        self,
        coordinator_url: str,
        token: str,
        *,
        sites: Values | None = None,
        timeout_s: float | None = None,
        http_timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        """`coordinator_url` is https://, or plain http:// only on a loopback address unless
        `allow_insecure_http=True` (see `Gateway`)."""
        super().__init__(
            coordinator_url,
            token,
            timeout=http_timeout,
            transport=transport,
            allow_insecure_http=allow_insecure_http,
        )
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
        numeric: Values = (),
        categorical: Mapping[str, Values] | None = None,
        offset: str | None = None,
        weights: str | None = None,
        intercept: bool = True,
        max_iterations: int | np.integer[Any] | None = None,
    ) -> GlmFit:
        """A federated GLM (gaussian, binomial, poisson) over the coordinator and its peers.

        `categorical` maps a column to its levels, the first being the reference. Returns a `GlmFit`
        (`params`, `bse`, `conf_int()`, `summary()`, `sites`); raises `GlmStopped` with the per-site
        table when a site refused. A fit over rows under a publication moratorium (DUO:0000024) has
        `publication_moratorium_until`, the latest such day of its sites (YYYY-MM-DD; None when no site is
        under one), as each such site's entry of `sites` has its own: the fit may not be published
        before it. A fit that stopped at its iteration limit before converging (`converged` False) warns
        with `ConvergenceWarning`, and its `summary()` says so in `attrs`."""
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
        status, data = self._send("POST", "/v1/federated-glm", json=body)
        if data.get("status") == "stopped":
            raise GlmStopped(_check_answer(status, data, "glm_stopped"))
        fit = GlmFit.from_dict(_check_answer(status, data, "glm"))
        if not fit.converged:
            warnings.warn(
                ConvergenceWarning(
                    f"the federated {fit.family} GLM did not converge in {fit.iterations} iterations: "
                    "its estimates and standard errors are not the maximum-likelihood ones (raise "
                    "max_iterations, or simplify the model)"
                ),
                stacklevel=2,
            )
        return fit

    def query(self, spec: Mapping[str, Any]) -> FederatedResult:
        """Submit a spec (plus optional `sites` and `timeout_s`) to the coordinator."""
        body = dict(spec)
        if self.sites is not None:
            body.setdefault("sites", self.sites)
        if self.timeout_s is not None:
            body.setdefault("timeout_s", self.timeout_s)
        status, data = self._send("POST", "/v1/federated-queries", json=body)
        _check_answer(status, data, "released", "federated")
        return FederatedResult(
            frame=_frame(status, data),
            sites=_sites_frame(data["sites"]),
            covered=list(data.get("covered") or []),
            disclosure=dict(data.get("disclosure") or {}),
            request_id=str(data.get("request_id")),
            raw=data,
            status=str(data.get("status") or "released"),
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


def _sites_frame(sites: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per site: SITE_COLUMNS first (None where a site's entry has no such member), then any other
    member an entry has, in the order they first appear."""
    columns = list(dict.fromkeys([*SITE_COLUMNS, *(name for site in sites for name in site)]))
    return pd.DataFrame([[site.get(c) for c in columns] for site in sites], columns=columns)
