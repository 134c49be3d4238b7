"""Federated quantiles from fine histograms, with a guaranteed bracket around each pooled quantile.

Round 1 asks every site for its own quantiles of the requested probabilities; the pooled quantile at p
lies (nearly always) between the smallest and the largest site quantile at p, since the pooled
distribution is a mixture of the sites'. So [min over sites of q(p_min), max over sites of q(p_max)],
padded by 5% each side, is cut into `BINS` equal bins, and round 2 asks every site for a histogram over
those agreed edges. For the rank k = p(N−1) that `percentile_cont` interpolates at, the released bins bound
the pooled count at or below every edge (bins are (a, b], as histograms' are), and the pooled quantile
provably lies in [lower, upper]: the highest edge with at most ⌊k⌋ values at or below it, and the lowest
edge with more than ⌈k⌉ values at or below it (None when no
edge qualifies: unbounded on that side, and no estimate). Where every site released the bins around the
quantile, upper − lower is one bin width (two when ranks ⌊k⌋ and ⌈k⌉ sit in adjacent bins); bins a site
suppressed or rounded widen the bracket, never falsify it. The estimate interpolates linearly inside the
bin and is clamped to the bracket, so |estimate − true| ≤ upper − lower, always.

Groups follow combine's rule for rare levels (`merged_levels`): a level that any site with an "(other)" in
that group column does not show, in either round, may be inside that site's "(other)", so it is pooled into
"(other)" at every site. A pooled level's quantiles then come from that level's own values only, and
"(other)" from everything else; a site's n and bins of the groups folded together are summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.federation.combine import (
    REASON_AT_SITE,
    REASON_POOLED_MIN,
    InvalidSiteAnswer,
    PooledTable,
    SiteTable,
    is_label,
    merged_levels,
)
from pseudonymize.disclosure import REASON_BELOW_MIN
from pseudonymize.disclosure.levels import OTHER

BINS = 100
_MAX_QUANTILE = 1e300
"""The largest quantile magnitude a site may send: the round-2 edges spanning ±1e300 stay finite."""
# Interpolated site quantiles of small samples can sit a little inside the pooled one; the padding keeps
# the pooled quantile between two edges (an end without such an edge is reported as None: unbounded).
PAD = 0.05


@dataclass(frozen=True)
class SiteQuantiles:
    """One site's round-1 answer: per group, its released n (None when hidden) and quantile values."""

    site: str
    n: dict[tuple[Any, ...], int | None]
    values: dict[tuple[Any, ...], dict[str, float | None]]
    round_to: int

    @classmethod
    def from_body(cls, site: str, body: Any, group_by: Sequence[str], names: Sequence[str]) -> SiteQuantiles:
        """Validate a released quantiles body (InvalidSiteAnswer when it does not hold together)."""
        if (
            not isinstance(body, dict)
            or body.get("kind") != "quantiles"
            or not isinstance(body.get("rows"), list)
        ):
            raise InvalidSiteAnswer(site, "the answer is not a released quantiles table")
        report = body.get("disclosure")
        round_to = report.get("round_to") if isinstance(report, dict) else None
        if not isinstance(round_to, int) or round_to < 1:
            raise InvalidSiteAnswer(site, "the disclosure report has no valid round_to")
        n: dict[tuple[Any, ...], int | None] = {}
        values: dict[tuple[Any, ...], dict[str, float | None]] = {}
        for row in body["rows"]:
            if not isinstance(row, dict) or not {*group_by, "n", *names} <= set(row):
                raise InvalidSiteAnswer(site, "a quantiles row lacks a column")
            if not all(map(is_label, row.values())):
                raise InvalidSiteAnswer(site, "a value is not a single text, number or flag JSON can carry")
            key = tuple(row[g] for g in group_by)
            size = row["n"]
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
                raise InvalidSiteAnswer(site, "n is not a non-negative integer")
            for name in names:
                v = row[name]
                # Within what the round-2 edges can span without overflowing a float (1.7e308 - -1.7e308).
                if v is not None and (
                    isinstance(v, bool) or not isinstance(v, int | float) or not abs(v) <= _MAX_QUANTILE
                ):
                    raise InvalidSiteAnswer(site, f"{name} is not a finite number within 1e300")
            n[key] = size
            values[key] = {name: (float(row[name]) if row[name] is not None else None) for name in names}
        return cls(site, n, values, round_to)


def plan_edges(sites: Sequence[SiteQuantiles], low_name: str, high_name: str) -> list[float]:
    """BINS + 1 equal-width edges covering every site's [q(p_min), q(p_max)], padded by PAD each side."""
    lows = [x for s in sites for v in s.values.values() if (x := v[low_name]) is not None]
    highs = [x for s in sites for v in s.values.values() if (x := v[high_name]) is not None]
    if not lows or not highs:
        return []
    low, high = min(lows), max(highs)
    if not high > low:
        high = low + max(1.0, abs(low) * 1e-9)
    elif (high - low) / BINS <= 4 * math.ulp(max(abs(low), abs(high))):
        # A span so narrow for its magnitude that the bins' edges would not increase: parted just enough.
        high = low + max(abs(low), abs(high)) * 1e-9
    start = low - PAD * (high - low)
    width = (high - low) * (1 + 2 * PAD) / BINS
    return [start + i * width for i in range(BINS + 1)]


def _count_range(value: int, round_to: int) -> tuple[int, int]:
    """The true counts a released count rounded half up to a multiple of `round_to` can stand for."""
    if round_to == 1:
        return value, value
    low = max(value - round_to // 2, 0)
    return low, value - round_to // 2 + round_to - 1


@dataclass(frozen=True)
class Bracket:
    """Where a pooled quantile provably lies, and the estimate inside."""

    estimate: float | None
    lower: float | None
    upper: float | None


def bracket(
    cum_lo: Sequence[float],
    cum_hi: Sequence[float],
    exact: Sequence[int | None],
    edges: Sequence[float],
    n_lo: int,
    n_hi: int,
    prob: float,
) -> Bracket:
    """The bracket of one quantile from bounds on the pooled count at or below each edge.

    `exact[j]` is the pooled count of bin j ((e(j-1), e(j)], bin 0 open below) when every site released
    it, else None.
    """
    if n_lo < 1:
        return Bracket(None, None, None)
    floor_rank = math.floor(prob * (n_lo - 1))
    ceil_rank = math.ceil(prob * (n_hi - 1))
    below = [e for e, hi in zip(edges, cum_hi, strict=True) if hi <= floor_rank]
    above = [e for e, lo in zip(edges, cum_lo, strict=True) if lo >= ceil_rank + 1]
    lower = max(below) if below else None
    upper = min(above) if above else None
    if lower is None or upper is None:
        return Bracket(None, lower, upper)
    estimate = (lower + upper) / 2
    if n_lo == n_hi:
        rank = prob * (n_lo - 1)
        for j in range(1, len(edges)):
            count = exact[j]
            start = cum_lo[j - 1]
            if count and cum_lo[j - 1] == cum_hi[j - 1] and start <= rank < start + count:
                width = edges[j] - edges[j - 1]
                estimate = edges[j - 1] + (rank - start + 0.5) / count * width
                break
    return Bracket(min(max(estimate, lower), upper), lower, upper)


_Key = tuple[Any, ...]
_Bins = tuple[list[tuple[int, int] | None], list[int | None]]


def _fold_key(key: _Key, group_by: Sequence[str], folded: Mapping[str, frozenset[Any]]) -> _Key:
    """A group's key with every level the pool merges relabelled "(other)"."""
    return tuple(OTHER if v in folded.get(g, ()) else v for g, v in zip(group_by, key, strict=True))


def _site_bins(
    table: SiteTable, group_by: Sequence[str], folded: Mapping[str, frozenset[Any]], n_bins: int
) -> dict[_Key, _Bins]:
    """Per pooled group, this site's bin counts as ranges (None where unknown) and exact (None where not).

    The site's own groups folded into one pooled group add up bin by bin; a bin unknown in any of them is
    unknown in their sum.
    """
    parts: dict[_Key, dict[_Key, _Bins]] = {}
    for row in table.rows:
        b = row.get("bin")
        if not isinstance(b, int) or not 0 <= b < n_bins:
            continue
        key = tuple(row.get(g) for g in group_by)
        pooled = parts.setdefault(_fold_key(key, group_by, folded), {})
        known, exact = pooled.setdefault(key, ([None] * n_bins, [None] * n_bins))
        if not row["suppressed"]:
            known[b] = _count_range(int(row["count"]), table.round_to)
            exact[b] = int(row["count"]) if table.round_to == 1 else None
        elif row.get("suppression_reason") == REASON_BELOW_MIN:
            # The label says what it says: a bin hidden for being small holds fewer than the minimum.
            known[b] = (0, table.min_cell_count - 1)
    summed: dict[_Key, _Bins] = {}
    for key, groups in parts.items():
        known_sum: list[tuple[int, int] | None] = [(0, 0)] * n_bins
        exact_sum: list[int | None] = [0] * n_bins
        for known, exact in groups.values():
            for b in range(n_bins):
                k, s, kb, eb = known_sum[b], exact_sum[b], known[b], exact[b]
                known_sum[b] = None if k is None or kb is None else (k[0] + kb[0], k[1] + kb[1])
                exact_sum[b] = None if s is None or eb is None else s + eb
        summed[key] = (known_sum, exact_sum)
    return summed


def _site_bounds(
    bins: _Bins | None, n_range: tuple[int, int], n_bins: int
) -> tuple[list[float], list[float]]:
    """Bounds on a site's count at or below each edge, from its bins of one group and its n's range."""
    known = bins[0] if bins is not None else [None] * n_bins
    n_lo, n_hi = n_range
    cum_lo: list[float] = []
    cum_hi: list[float] = []
    for j in range(n_bins - 1):  # the count at or below edge j covers bins 0..j
        inside, outside = known[: j + 1], known[j + 1 :]
        lo = max(
            float(sum(k[0] for k in inside if k is not None)),
            n_lo - sum(k[1] if k is not None else math.inf for k in outside),
        )
        hi = min(
            n_hi - sum(k[0] for k in outside if k is not None),
            sum(k[1] if k is not None else math.inf for k in inside),
        )
        cum_lo.append(lo)
        cum_hi.append(hi)
    return cum_lo, cum_hi


def _round1_table(s: SiteQuantiles, group_by: Sequence[str]) -> SiteTable:
    """A site's round-1 groups as the rows `merged_levels` reads the levels a site shows from."""
    rows = [dict(zip(group_by, key, strict=True)) for key in s.n]
    return SiteTable(s.site, list(group_by), rows, 1, s.round_to)


def pool_quantiles(
    round1: Sequence[SiteQuantiles],
    histograms: Mapping[str, SiteTable],
    group_by: Sequence[str],
    probs: Sequence[float],
    names: Sequence[str],
    edges: Sequence[float],
) -> PooledTable:
    """Pooled quantiles per group with their brackets; a group any covered site hid stays hidden.

    Levels are folded into "(other)" as `merged_levels` says, from both rounds' answers of the covered
    sites: a level a site merged in one round and showed in the other (its data changed between the rounds)
    is pooled into "(other)", where both its round-1 n and its round-2 bins lie.
    """
    sites = [s for s in round1 if s.site in histograms]
    n_bins = len(edges) + 1
    answers = [*(histograms[s.site] for s in sites), *(_round1_table(s, group_by) for s in sites)]
    folded = merged_levels(group_by, answers)
    # Per site, its released n of every original group in each pooled group.
    sizes_by_site: list[dict[_Key, list[int | None]]] = []
    keys: dict[_Key, None] = {}
    for s in sites:
        sizes: dict[_Key, list[int | None]] = {}
        for key, size in s.n.items():
            pooled_key = _fold_key(key, group_by, folded)
            sizes.setdefault(pooled_key, []).append(size)
            keys.setdefault(pooled_key)
        sizes_by_site.append(sizes)
    bins_by_site = [_site_bins(histograms[s.site], group_by, folded, n_bins) for s in sites]
    columns = [
        *group_by,
        "n",
        *names,
        *(f"{n}_lower" for n in names),
        *(f"{n}_upper" for n in names),
        "bin_width",
        "suppressed",
        "suppression_reason",
    ]
    minimum = max((histograms[s.site].min_cell_count for s in sites), default=1)
    rows: list[dict[str, Any]] = []
    hidden = small = 0
    width = edges[1] - edges[0] if len(edges) > 1 else None
    for key in keys:
        row: dict[str, Any] = dict(zip(group_by, key, strict=True))
        parts = [sizes.get(key, []) for sizes in sizes_by_site]
        at_site = any(size is None for part in parts for size in part)
        # As for pooled counts: a group whose released sizes add up to fewer than the strictest site's
        # min_cell_count is hidden, though each site released its part under its own rule.
        too_small = not at_site and 0 < sum(size or 0 for part in parts for size in part) < minimum
        if at_site or too_small:
            hidden += at_site
            small += too_small
            row.update({c: None for c in columns if c not in row})
            row.update(suppressed=True, suppression_reason=REASON_AT_SITE if at_site else REASON_POOLED_MIN)
            rows.append(row)
            continue
        cum_lo = [0.0] * (n_bins - 1)
        cum_hi = [0.0] * (n_bins - 1)
        exact: list[int | None] = [0] * n_bins
        n_lo = n_hi = 0
        for s, part, bins in zip(sites, parts, bins_by_site, strict=True):
            ranges = [_count_range(size, s.round_to) for size in part if size is not None]
            n_range = (sum(r[0] for r in ranges), sum(r[1] for r in ranges))
            n_lo, n_hi = n_lo + n_range[0], n_hi + n_range[1]
            site_bins = bins.get(key)
            lo, hi = _site_bounds(site_bins, n_range, n_bins)
            ex = site_bins[1] if site_bins is not None else [None] * n_bins
            cum_lo = [a + b for a, b in zip(cum_lo, lo, strict=True)]
            cum_hi = [a + b for a, b in zip(cum_hi, hi, strict=True)]
            exact = [None if a is None or b is None else a + b for a, b in zip(exact, ex, strict=True)]
        row["n"] = n_lo if n_lo == n_hi else (n_lo + n_hi) // 2
        for prob, name in zip(probs, names, strict=True):
            got = bracket(cum_lo, cum_hi, exact, edges, n_lo, n_hi, prob)
            row[name], row[f"{name}_lower"], row[f"{name}_upper"] = got.estimate, got.lower, got.upper
        row.update(bin_width=width, suppressed=False, suppression_reason=None)
        rows.append({c: row.get(c) for c in columns})
    reasons = [
        f"quantiles from {len(edges) + 1} histogram bins of width {width:.6g}; each lies in its "
        "[lower, upper] bracket"
        if width is not None
        else "no site released a quantile to plan bins from",
        f"{hidden} group(s) hidden because a site suppressed them" if hidden else "no group suppressed",
    ]
    if small:
        reasons.append(f"{small} group(s) hidden: fewer than {minimum} rows pooled (min_cell_count)")
    if folded:
        merged = sum(len(levels) for levels in folded.values())
        reasons.append(
            f"{merged} level(s) pooled into {OTHER}: a site merged its rare levels there, and a pooled "
            "level's quantiles come only from that level's own values"
        )
    return PooledTable(
        columns, [{c: r.get(c) for c in columns} for r in rows], minimum, hidden + small, reasons
    )
