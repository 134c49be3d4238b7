"""Pooling sites' released Kaplan–Meier bins into one survival curve with Greenwood confidence intervals.

Each site answers a `kaplan_meier` query with merged bins (lower, upper] and the rows at risk at each bin's
start, the events and censorings in it (see pseudonymize.disclosure.km_bins). Sites merge differently, so
the coordinator pools on the common coarsening: the bins whose edges are edges of every site, up to the
last edge every site released. Within a common bin the sites' events and censorings add up, and the rows
at risk at its start are each site's at-risk count at that edge.

The pooled curve is the Kaplan–Meier estimate of the pooled rows with each time moved to the upper edge
of its common bin: S(uⱼ) = Πᵢ≤ⱼ (1 − dᵢ/nᵢ). `std_err` is Greenwood's S·√Σ dᵢ/(nᵢ(nᵢ−dᵢ)); the interval
is the log(−log) ("exponential Greenwood") one lifelines reports, which stays inside [0, 1].

The federation-core combine step calls `pool_released_answers(bodies)` with each answered site's
`/v1/queries` body (or `pool_kaplan_meier(site_results)` with frames from `site_frame(body)`). Every pooled
count is a sum of counts that passed the cell rule at their site, so it passes too; the pooled table is
checked again all the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from gateway.federation.combine import is_label

SITE_COLUMNS = ("lower", "upper", "at_risk", "events", "censored")
POOLED_COLUMNS = (*SITE_COLUMNS, "survival", "std_err", "ci_lower", "ci_upper")


class KaplanMeierPoolError(ValueError):
    """Sites' survival tables cannot be pooled: malformed, inconsistent, or no common bin."""


def site_frame(body: Mapping[str, Any]) -> pd.DataFrame:
    """The released bins of one site's `kaplan_meier` answer (its `rows`) as a frame of SITE_COLUMNS."""
    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        raise KaplanMeierPoolError("the answer holds no survival rows")
    try:
        frame = pd.DataFrame([{c: row[c] for c in SITE_COLUMNS} for row in rows], columns=list(SITE_COLUMNS))
    except (KeyError, TypeError):
        raise KaplanMeierPoolError(f"a survival row lacks one of {', '.join(SITE_COLUMNS)}") from None
    return frame


def check_site_answer(site: str, body: Mapping[str, Any]) -> None:
    """KaplanMeierPoolError naming what is wrong with one site's answer, checked on its own, so that one
    malformed answer is set aside and the others are still pooled."""
    report = body.get("disclosure")
    minimum = report.get("min_cell_count") if isinstance(report, Mapping) else None
    if isinstance(minimum, bool) or not isinstance(minimum, int) or not 1 <= minimum <= 2**31:
        raise KaplanMeierPoolError(f"{site}: the disclosure report has no valid min_cell_count")
    rows = body.get("rows")
    if not isinstance(rows, list) or not all(
        isinstance(r, Mapping) and all(map(is_label, r.values())) for r in rows
    ):
        raise KaplanMeierPoolError(f"{site}: a value is not a single text, number or flag JSON can carry")
    _checked(site, site_frame(body))


@dataclass(frozen=True)
class _Bin:
    lower: float | None
    upper: float
    at_risk: int
    events: int
    censored: int


def _checked(site: str, frame: pd.DataFrame) -> list[_Bin]:
    missing = [c for c in SITE_COLUMNS if c not in frame.columns]
    if missing or frame.empty:
        raise KaplanMeierPoolError(f"{site}: the survival table lacks {', '.join(missing) or 'rows'}")
    bins: list[_Bin] = []
    try:
        for lower, upper, n, d, c in frame[list(SITE_COLUMNS)].itertuples(index=False, name=None):
            bins.append(_Bin(None if pd.isna(lower) else float(lower), float(upper), int(n), int(d), int(c)))
    except (TypeError, ValueError, OverflowError):  # a missing value, a string, 1e999
        raise KaplanMeierPoolError(f"{site}: a survival count or edge is missing") from None
    if bins[0].lower is not None:
        raise KaplanMeierPoolError(f"{site}: the first bin must start at the beginning (lower null)")
    for i, b in enumerate(bins):
        if min(b.at_risk, b.events, b.censored) < 0 or b.events + b.censored > b.at_risk:
            raise KaplanMeierPoolError(f"{site}: bin {i} has more events and censorings than rows at risk")
        if i + 1 < len(bins):
            after = bins[i + 1]
            if after.lower != b.upper or not after.upper > b.upper:
                raise KaplanMeierPoolError(f"{site}: bins must be contiguous and increasing")
            if after.at_risk != b.at_risk - b.events - b.censored:
                raise KaplanMeierPoolError(f"{site}: rows at risk do not follow from the bin before")
    return bins


def common_edges(site_results: Mapping[str, pd.DataFrame]) -> list[float]:
    """Upper edges every site released: the finest partition each site's bins refine into."""
    if not site_results:
        raise KaplanMeierPoolError("no site answered")
    sets = [{float(u) for u in frame["upper"]} for frame in site_results.values()]
    return sorted(set.intersection(*sets))


def pool_kaplan_meier(site_results: Mapping[str, pd.DataFrame], *, alpha: float = 0.05) -> pd.DataFrame:
    """The pooled survival curve at the common bins (POOLED_COLUMNS); `site_results` maps site → released
    bins (SITE_COLUMNS, as `site_frame` returns). KaplanMeierPoolError when nothing can be pooled."""
    if not 0 < alpha < 1:
        raise KaplanMeierPoolError("alpha must lie between 0 and 1")
    sites = {site: _checked(site, frame) for site, frame in site_results.items()}
    edges = common_edges(site_results)
    if not edges:
        raise KaplanMeierPoolError("the sites released no common time bin")
    rows: list[dict[str, Any]] = []
    lower: float | None = None
    for upper in edges:
        n = d = c = 0
        for bins in sites.values():
            inside = [b for b in bins if (lower is None or b.upper > lower) and b.upper <= upper]
            n += inside[0].at_risk
            d += sum(b.events for b in inside)
            c += sum(b.censored for b in inside)
        rows.append({"lower": lower, "upper": upper, "at_risk": n, "events": d, "censored": c})
        lower = upper
    pooled = pd.DataFrame(rows, columns=list(SITE_COLUMNS))
    return _curve(pooled, alpha)


@dataclass(frozen=True)
class PooledSurvival:
    """The pooled curve as JSON-ready rows, with the strictest site threshold and what pooling did."""

    columns: list[str]
    rows: list[dict[str, Any]]
    min_cell_count: int
    reasons: list[str]


def pool_released_answers(bodies: Mapping[str, Mapping[str, Any]], *, alpha: float = 0.05) -> PooledSurvival:
    """Pool sites' `kaplan_meier` answers (site → body); KaplanMeierPoolError when they cannot be pooled."""
    frames = {site: site_frame(body) for site, body in bodies.items()}
    curve = pool_kaplan_meier(frames, alpha=alpha)
    minimum = max(int((body.get("disclosure") or {}).get("min_cell_count") or 1) for body in bodies.values())
    counts = curve[["at_risk", "events", "censored"]].to_numpy()
    # Zeros pass only where a site's agreement let them show; sums of released counts never fall below.
    if ((counts > 0) & (counts < minimum)).any():
        raise KaplanMeierPoolError("a pooled count fell below the cell rule")
    finest = max(len(frame) for frame in frames.values())
    reasons = [
        f"pooled on the {len(curve)} bins every site released (the finest site released {finest}); "
        f"every count is a sum of site counts of at least {minimum}"
    ]
    rows = [
        {str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in curve.astype(object).to_dict("records")
    ]
    return PooledSurvival(list(POOLED_COLUMNS), rows, minimum, reasons)


def _curve(pooled: pd.DataFrame, alpha: float) -> pd.DataFrame:
    n = pooled["at_risk"].to_numpy(dtype=float)
    d = pooled["events"].to_numpy(dtype=float)
    survival = np.cumprod(1.0 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(np.where(d > 0, d / (n * (n - d)), 0.0))
        std_err = survival * np.sqrt(greenwood)
        z = NormalDist().inv_cdf(1 - alpha / 2)
        log_s = np.log(survival)
        # lifelines' exponential Greenwood interval: log(−log S) ± z·√Σ / log S, mapped back.
        spread = z * np.sqrt(greenwood) / log_s
        a = np.exp(-np.exp(np.log(-log_s) + spread))
        b = np.exp(-np.exp(np.log(-log_s) - spread))
    out = pooled.copy()
    out["survival"] = survival
    out["std_err"] = std_err
    out["ci_lower"] = np.where(survival >= 1.0, 1.0, np.fmin(a, b))
    out["ci_upper"] = np.where(survival >= 1.0, 1.0, np.fmax(a, b))
    # S = 0 leaves no interval worth the name; report the point.
    out.loc[survival <= 0.0, ["ci_lower", "ci_upper"]] = 0.0
    if math.isnan(float(out["survival"].iloc[-1])):
        raise KaplanMeierPoolError("a pooled bin has no rows at risk")
    return out
