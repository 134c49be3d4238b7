"""The coordinator's side of a federated GLM: Fisher scoring over sites' XᵀWX and XᵀWz, as DataSHIELD's glm.

The coordinator holds β (starting at 0). Each iteration every site receives β and returns, over its own
rows (prior weights w, offset o, η = Xβ + o, μ = g⁻¹(η)):

    XᵀWX with W = w·(dμ/dη)² / V(μ),   XᵀWz with z = (η − o) + (y − μ)/(dμ/dη)  (the working response),
    its deviance, its Pearson χ² = Σ w(y − μ)²/V(μ), and its row count n.

The coordinator sums them, and stops when |dev − dev_old| / (|dev| + 0.1) ≤ 1e-8 (glm.fit's criterion)
or at the iteration cap; otherwise β ← (ΣXᵀWX)⁻¹ ΣXᵀWz, which is exactly one IRLS step of glm.fit. The
estimate is the β the converged deviance was computed at, and its covariance φ·(ΣXᵀWX)⁻¹ at that β, with
φ = 1 for binomial and poisson and φ = Pearson χ² / (N − p) for gaussian, as statsmodels' GLM. z = β/se,
two-sided normal p-values and normal confidence intervals (statsmodels' GLM default, every family).
Residuals and linear predictors never leave a site: only the sums above do.

A site that refuses (policy, disclosure at any iteration, the iteration cap) stops the whole fit:
`FitStopped` carries the per-site status table. A site whose dataset's consent sets a publication
moratorium (DUO:0000024) says until when as it opens its session; its row of the table carries that day,
and the fit carries the latest day of its sites. `time_federated_glm` is the benchmark's entry point.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from gateway.federation.peer_answers import TOO_LARGE, peer_reasons, read_capped
from gateway.query.columns import iso_date

Family = Literal["gaussian", "binomial", "poisson"]
FAMILIES: tuple[Family, ...] = ("gaussian", "binomial", "poisson")
TOLERANCE = 1e-8
DISCLOSURE_TITLE = "Refused by disclosure control"
INTERCEPT = "(Intercept)"
Signer = Callable[[str, str, bytes], Mapping[str, str]]
"""(method, path, body) → the peer-authentication headers of one request."""
DEFAULT_MAX_ITERATIONS = 25
MORATORIUM = "publication_moratorium_until"
"""The key of a publication moratorium's last day (DUO:0000024), as every answer names it."""
# The federation's per-site states (gateway.federation.coordinator), "refused" for any other refusal.
SiteState = Literal[
    "answered", "denied", "suppressed", "approval_pending", "unreachable", "timed_out", "refused",
    "invalid_answer",
]  # fmt: skip


def moratorium_day(value: Any) -> str | None:
    """`value` when it is a day written YYYY-MM-DD, else None (a site's answer is read as the federation
    reads a query's policy block: anything else is no moratorium)."""
    return value if isinstance(value, str) and iso_date(value) is not None else None


class GlmFitError(Exception):
    """The federated fit cannot go on; the message says why (never a site's row-level value)."""


class SiteStopped(GlmFitError):
    """One site refused to continue; `status` is its state in the per-site table (as the federation's)."""

    def __init__(self, site: str, status: SiteState, reasons: Sequence[str], iteration: int) -> None:
        self.site = site
        self.status = status
        self.reasons = list(reasons)
        self.iteration = iteration
        super().__init__(f"{site} stopped the fit at iteration {iteration}: {'; '.join(self.reasons)}")


class FitStopped(GlmFitError):
    """The fit stopped because at least one site refused; `sites` is the per-site status table."""

    def __init__(self, iteration: int, sites: list[dict[str, Any]]) -> None:
        self.iteration = iteration
        self.sites = sites
        stopped = [s for s in sites if s["status"] != "answered"]
        super().__init__(
            "; ".join(f"{s['site']} ({s['status']}): {'; '.join(s['reasons'])}" for s in stopped)
        )


@dataclass(frozen=True)
class SiteStatistics:
    """What one site releases for one iteration."""

    xtwx: np.ndarray
    xtwz: np.ndarray
    deviance: float
    pearson_chi2: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (Python floats round-trip exactly through JSON)."""
        return {
            "xtwx": self.xtwx.tolist(),
            "xtwz": self.xtwz.tolist(),
            "deviance": float(self.deviance),
            "pearson_chi2": float(self.pearson_chi2),
            "n": int(self.n),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], parameters: int) -> SiteStatistics:
        """Parse a site's answer; GlmFitError on a wrong shape or a non-finite number."""
        try:
            xtwx = np.asarray(data["xtwx"], dtype=float)
            xtwz = np.asarray(data["xtwz"], dtype=float)
            deviance, pearson, n = float(data["deviance"]), float(data["pearson_chi2"]), int(data["n"])
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):  # not an object, n = 1e999
            raise GlmFitError("a site's iteration answer is malformed") from None
        if xtwx.shape != (parameters, parameters) or xtwz.shape != (parameters,):
            raise GlmFitError("a site's iteration answer has the wrong number of parameters")
        statistics = cls(xtwx, xtwz, deviance, pearson, n)
        if not statistics.finite() or n < 0:
            raise GlmFitError("a site's iteration answer holds a non-finite number")
        return statistics

    def finite(self) -> bool:
        """Every number is finite (a far β can overflow a site's sums)."""
        return bool(
            np.isfinite(self.xtwx).all() and np.isfinite(self.xtwz).all()
            and math.isfinite(self.deviance) and math.isfinite(self.pearson_chi2)
        )  # fmt: skip


class GlmSite(Protocol):
    """One site of a federated fit, as the coordinator drives it (over HTTP or in-process)."""

    site: str
    publication_moratorium_until: str | None
    """Set by `open`: the last day of the publication moratorium the site's rows are under, if any."""

    async def open(self) -> list[str]:
        """Open the site's session; return its parameter names. SiteStopped on refusal."""
        ...

    async def iterate(self, beta: Sequence[float], iteration: int) -> SiteStatistics:
        """One iteration at β. SiteStopped on refusal."""
        ...

    async def close(self) -> None:
        """End the session (never raises)."""
        ...


@dataclass
class GlmFit:
    """A fitted federated GLM with statsmodels-like accessors: `params`, `bse`, `conf_int()`, `summary()`."""

    names: list[str]
    family: Family
    coefficients: np.ndarray
    covariance: np.ndarray
    scale: float
    deviance: float
    pearson_chi2: float
    nobs: int
    iterations: int
    converged: bool
    sites: list[dict[str, Any]] = field(default_factory=list)
    publication_moratorium_until: str | None = None
    """The last day of a publication moratorium (DUO:0000024) any site's rows are under, YYYY-MM-DD: the
    fit may not be published before it. None when no site is under one."""

    @property
    def params(self) -> pd.Series:
        """Coefficients by parameter name."""
        return pd.Series(self.coefficients, index=self.names, name="coef")

    @property
    def bse(self) -> pd.Series:
        """Standard errors."""
        return pd.Series(np.sqrt(np.diag(self.covariance)), index=self.names, name="std_err")

    @property
    def tvalues(self) -> pd.Series:
        """z values (β / se)."""
        return pd.Series(self.params / self.bse, name="z")

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided normal p-values."""
        norm = NormalDist()
        return pd.Series([2 * (1 - norm.cdf(abs(z))) for z in self.tvalues], index=self.names, name="p")

    @property
    def df_resid(self) -> int:
        """N − p."""
        return self.nobs - len(self.names)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Normal confidence intervals (columns 0 and 1, as statsmodels)."""
        q = NormalDist().inv_cdf(1 - alpha / 2)
        return pd.DataFrame({0: self.params - q * self.bse, 1: self.params + q * self.bse})

    def summary(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row per parameter: coef, std_err, z, p, ci_lower, ci_upper. `attrs["converged"]` is the fit's
        `converged`; a fit that did not converge also has `attrs["note"]` saying so."""
        ci = self.conf_int(alpha)
        table = pd.DataFrame(
            {
                "coef": self.params,
                "std_err": self.bse,
                "z": self.tvalues,
                "p": self.pvalues,
                "ci_lower": ci[0],
                "ci_upper": ci[1],
            }
        )
        table.attrs["converged"] = self.converged
        if not self.converged:
            table.attrs["note"] = (
                f"not converged: the fit stopped after {self.iterations} iterations; the estimates and "
                "standard errors are not the maximum-likelihood ones"
            )
        return table

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the coordinator returns."""
        table = self.summary()
        return {
            "status": "converged" if self.converged else "not_converged",
            "family": self.family,
            "parameters": self.names,
            "coefficients": self.coefficients.tolist(),
            "covariance": self.covariance.tolist(),
            "summary": [
                {"parameter": n, **{k: float(v) for k, v in row.items()}}
                for n, row in zip(self.names, table.to_dict("records"), strict=True)
            ],
            "scale": self.scale,
            "deviance": self.deviance,
            "pearson_chi2": self.pearson_chi2,
            "nobs": self.nobs,
            "df_resid": self.df_resid,
            "iterations": self.iterations,
            "converged": self.converged,
            "sites": self.sites,
            **({MORATORIUM: self.publication_moratorium_until} if self.publication_moratorium_until else {}),
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> GlmFit:
        """The fit from the coordinator's JSON body."""
        return cls(
            names=list(body["parameters"]),
            family=body["family"],
            coefficients=np.asarray(body["coefficients"], dtype=float),
            covariance=np.asarray(body["covariance"], dtype=float),
            scale=float(body["scale"]),
            deviance=float(body["deviance"]),
            pearson_chi2=float(body["pearson_chi2"]),
            nobs=int(body["nobs"]),
            iterations=int(body["iterations"]),
            converged=bool(body["converged"]),
            sites=list(body.get("sites") or []),
            publication_moratorium_until=moratorium_day(body.get(MORATORIUM)),
        )


def relative_change(deviance: float, previous: float) -> float:
    """glm.fit's convergence measure."""
    return abs(deviance - previous) / (abs(deviance) + 0.1)


async def fit_federated_glm(
    sites: Sequence[GlmSite],
    family: Family,
    *,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    tolerance: float = TOLERANCE,
) -> GlmFit:
    """Open every site's session, run Fisher scoring to convergence or the cap, close every session.

    Sites run concurrently within an iteration. FitStopped when any site refuses (with the status table);
    GlmFitError when sites disagree on the parameters or the pooled information matrix is singular."""
    if not sites:
        raise GlmFitError("no site to fit on")
    table = {s.site: {"site": s.site, "status": "answered", "reasons": [], "iteration": 0} for s in sites}
    try:
        names = await _gather(sites, table, 0, [_open(s, table[s.site]) for s in sites])
        if any(n != names[0] for n in names):
            raise GlmFitError("the sites built different parameter lists; check the model's levels")
        p = len(names[0])
        beta = np.zeros(p)
        previous: float | None = None
        iteration = 0
        pooled: SiteStatistics | None = None
        converged = False
        while iteration < max_iterations:
            iteration += 1
            stats = await _gather(
                sites, table, iteration, [s.iterate(beta.tolist(), iteration) for s in sites]
            )
            pooled = _pool(stats)
            if previous is not None and relative_change(pooled.deviance, previous) <= tolerance:
                converged = True
                break
            previous = pooled.deviance
            if iteration == max_iterations:
                break
            beta = _solve(pooled.xtwx, pooled.xtwz)
            if iteration == 1 and family == "poisson" and names[0][:1] == [INTERCEPT]:
                beta = _null_start(pooled, p)
        assert pooled is not None
        for row in table.values():
            row["iteration"] = iteration
            row["rows"] = next(st.n for s, st in zip(sites, stats, strict=True) if s.site == row["site"])
        fit = _result(names[0], family, beta, pooled, iteration, converged, list(table.values()))
        # Every site contributed: the fit is under the latest moratorium of any (ISO dates sort as days).
        moratoria = [str(row[MORATORIUM]) for row in table.values() if MORATORIUM in row]
        fit.publication_moratorium_until = max(moratoria) if moratoria else None
        return fit
    finally:
        await asyncio.gather(*(s.close() for s in sites), return_exceptions=True)


async def _open(site: GlmSite, row: dict[str, Any]) -> list[str]:
    """Open one site's session; its row of the table notes the moratorium it is under, even should
    another site stop the fit."""
    names = await site.open()
    until = moratorium_day(site.publication_moratorium_until)
    if until is not None:
        row[MORATORIUM] = until
    return names


async def _gather(
    sites: Sequence[GlmSite], table: dict[str, dict[str, Any]], iteration: int, calls: Sequence[Any]
) -> list[Any]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    stopped = False
    for site, result in zip(sites, results, strict=True):
        if isinstance(result, SiteStopped):
            table[site.site].update(status=result.status, reasons=result.reasons, iteration=iteration)
            stopped = True
        elif isinstance(result, BaseException):
            raise result
    if stopped:
        raise FitStopped(iteration, list(table.values()))
    return list(results)


def _null_start(at_zero: SiteStatistics, parameters: int) -> np.ndarray:
    """The intercept-only Poisson fit, from the sums at β = 0, as the second iterate.

    At β = 0 the working weights are w·e^offset and XᵀWz's intercept entry is Σw·y − Σw·e^offset, so
    log(Σw·y / Σw·e^offset) is the null model's intercept, where glm.fit's own start (μ = y + 0.1) also
    leads. A plain step from β = 0 overshoots: its working weights pile onto the few largest rows, which a
    site then refuses to sum (`check_weight_spread`)."""
    exposure = float(at_zero.xtwx[0, 0])
    events = float(at_zero.xtwz[0]) + exposure
    beta = np.zeros(parameters)
    if exposure > 0 and events > 0:
        beta[0] = math.log(events / exposure)
    return beta


def _pool(stats: Sequence[SiteStatistics]) -> SiteStatistics:
    return SiteStatistics(
        xtwx=sum((s.xtwx for s in stats), np.zeros_like(stats[0].xtwx)),
        xtwz=sum((s.xtwz for s in stats), np.zeros_like(stats[0].xtwz)),
        deviance=math.fsum(s.deviance for s in stats),
        pearson_chi2=math.fsum(s.pearson_chi2 for s in stats),
        n=sum(s.n for s in stats),
    )


def _solve(xtwx: np.ndarray, xtwz: np.ndarray) -> np.ndarray:
    try:
        solution: np.ndarray = np.linalg.solve(xtwx, xtwz)
    except np.linalg.LinAlgError:
        raise GlmFitError(
            "the pooled information matrix is singular: covariates are collinear or a level is empty"
        ) from None
    if not np.isfinite(solution).all():
        raise GlmFitError("the fit diverged (non-finite coefficients)")
    return solution


def _result(
    names: list[str],
    family: Family,
    beta: np.ndarray,
    pooled: SiteStatistics,
    iterations: int,
    converged: bool,
    sites: list[dict[str, Any]],
) -> GlmFit:
    p = len(names)
    if pooled.n <= p:
        raise GlmFitError("the pooled fit has no residual degrees of freedom")
    scale = pooled.pearson_chi2 / (pooled.n - p) if family == "gaussian" else 1.0
    try:
        covariance = scale * np.linalg.inv(pooled.xtwx)
    except np.linalg.LinAlgError:
        raise GlmFitError("the pooled information matrix is singular at the estimate") from None
    return GlmFit(
        names,
        family,
        beta,
        covariance,
        scale,
        pooled.deviance,
        pooled.pearson_chi2,
        pooled.n,
        iterations,
        converged,
        sites,
    )


def time_federated_glm(
    rows_per_site: int = 1_000_000, sites: int = 3, parameters: int = 10, seed: int = 7
) -> dict[str, float]:
    """Benchmark a logistic fit over `sites` in-process sites (the site code path, not HTTP) against
    statsmodels' pooled fit of the same rows: {"glm_seconds", "statsmodels_seconds", "iterations"}."""
    import statsmodels.api as sm

    from gateway.federation.glm_site import GlmArrays, InMemoryGlmSite

    rng = np.random.default_rng(seed)
    true_beta = rng.normal(0, 0.3, parameters)
    parts = []
    for _ in range(sites):
        x = np.column_stack([np.ones(rows_per_site), rng.normal(size=(rows_per_site, parameters - 1))])
        y = (rng.random(rows_per_site) < 1 / (1 + np.exp(-(x @ true_beta)))).astype(float)
        parts.append(GlmArrays(x, y, np.zeros(rows_per_site), np.ones(rows_per_site)))
    names = ["(Intercept)", *(f"x{i}" for i in range(1, parameters))]
    handles = [InMemoryGlmSite(f"site-{i}", names, part, "binomial") for i, part in enumerate(parts)]
    started = time.perf_counter()
    fit = asyncio.run(fit_federated_glm(handles, "binomial"))
    glm_seconds = time.perf_counter() - started
    x_all = np.vstack([p.x for p in parts])
    y_all = np.concatenate([p.y for p in parts])
    started = time.perf_counter()
    reference = sm.GLM(y_all, x_all, family=sm.families.Binomial()).fit()
    statsmodels_seconds = time.perf_counter() - started
    if not np.allclose(reference.params, fit.coefficients, rtol=1e-6, atol=1e-9):
        raise GlmFitError("the federated fit differs from statsmodels' pooled fit")
    return {
        "glm_seconds": round(glm_seconds, 3),
        "statsmodels_seconds": round(statsmodels_seconds, 3),
        "iterations": fit.iterations,
    }


class HttpGlmSite:
    """A peer site driven over HTTP with the researcher's own token (each peer re-validates it)."""

    def __init__(
        self,
        site: str,
        base_url: str,
        authorization: str,
        session_request: Mapping[str, Any],
        client: Any,
        *,
        sign: Signer | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.site = site
        self.base_url = base_url.rstrip("/")
        self.authorization = authorization
        self.body = dict(session_request)
        self.client = client  # an httpx.AsyncClient shared by the fit
        self.sign = sign
        self.timeout = timeout
        self.session: str | None = None
        self.publication_moratorium_until: str | None = None

    async def open(self) -> list[str]:
        data = await self._call("POST", "/v1/glm/sessions", 0, self.body)
        if data.get("status") == "pending_approval":
            raise SiteStopped(self.site, "approval_pending", peer_reasons(data, "pending approval"), 0)
        session, names = data.get("session"), data.get("parameters")
        if (
            not isinstance(session, str)
            or not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
        ):
            lacking = ["the session's answer lacks its id or parameters"]
            raise SiteStopped(self.site, "invalid_answer", lacking, 0)
        self.session = session
        self.publication_moratorium_until = moratorium_day(data.get(MORATORIUM))
        return list(names)

    async def iterate(self, beta: Sequence[float], iteration: int) -> SiteStatistics:
        body = {"agreement": self.body["agreement"], "beta": list(beta)}
        try:
            data = await self._call("POST", f"/v1/glm/sessions/{self.session}/iterations", iteration, body)
        except SiteStopped:
            self.session = None  # a refusing site has closed the session itself
            raise
        try:
            return SiteStatistics.from_dict(data, len(beta))
        except GlmFitError as exc:
            raise SiteStopped(self.site, "invalid_answer", [str(exc)], iteration) from None

    async def close(self) -> None:
        if self.session is None:
            return
        session, self.session = self.session, None
        import httpx

        path = f"/v1/glm/sessions/{session}"
        try:
            await self.client.delete(
                f"{self.base_url}{path}", headers=self._headers("DELETE", path, b""), timeout=self.timeout
            )
        except httpx.HTTPError:
            return  # the peer expires idle sessions itself

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        headers = {"Authorization": self.authorization, "Content-Type": "application/json"}
        if self.sign is not None:
            headers.update(self.sign(method, path, body))
        return headers

    async def _call(self, method: str, path: str, iteration: int, payload: Any) -> dict[str, Any]:
        import httpx

        from gateway.problems import PEER_UNREACHABLE, STATUS

        body = json.dumps(payload).encode()
        try:
            # The timeout bounds the whole exchange, not each read (a peer could trickle its answer).
            status_code, content = await asyncio.wait_for(
                read_capped(
                    self.client,
                    method,
                    f"{self.base_url}{path}",
                    content=body,
                    headers=self._headers(method, path, body),
                    timeout=self.timeout,
                ),
                self.timeout,
            )
        except (httpx.TimeoutException, TimeoutError):
            raise SiteStopped(
                self.site, "timed_out", [f"no answer within {self.timeout:g} s"], iteration
            ) from None
        except httpx.HTTPError as exc:
            raise SiteStopped(self.site, "unreachable", [type(exc).__name__], iteration) from None
        if content is None:
            raise SiteStopped(self.site, "invalid_answer", [TOO_LARGE], iteration)
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            data = None
        if not httpx.codes.is_success(status_code):
            reasons = peer_reasons(data, str(status_code))
            data = data if isinstance(data, dict) else {}
            status: SiteState = "refused"
            if status_code == STATUS["forbidden"]:
                status = "suppressed" if data.get("title") == DISCLOSURE_TITLE else "denied"
            elif status_code in PEER_UNREACHABLE:
                status = "unreachable"
            raise SiteStopped(self.site, status, reasons, iteration)
        if not isinstance(data, dict):
            raise SiteStopped(self.site, "invalid_answer", ["the answer is not a JSON object"], iteration)
        return data
