"""Pool what sites released: counts, cross-tabs and histograms summed, summaries from (n, mean, variance).

Conservative semantics (the pooled table is a function of the site answers, so it tells nothing they
did not): a pooled entry — cell, margin, bin or group — is released only when *every* covered site
released it (a level a site does not have is a known zero there); an entry any site hid stays hidden in
the pool. Disclosure control is then applied again with the strictest `min_cell_count` of the answering
sites: a pooled count below it (possible only when sites with laxer rules released small numbers or zeros)
is hidden too. A site answer that breaks its own declared rules is refused as invalid, never pooled.

A site merges the levels of a group column held by fewer than its `min_cell_count` rows into one level
"(other)" (pseudonymize.disclosure.levels), so a level missing from such a site's answer may be inside its
"(other)" rather than a zero. A pooled level is therefore only ever the sum of that level's own rows: a
level that any site with an "(other)" in that column does not show is folded into the pooled "(other)"
at every site, and "(other)" holds everything that is not a level shown in the pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.utf8 import is_text
from pseudonymize.disclosure.levels import OTHER

PoolKind = Literal["count", "crosstab", "summary", "histogram"]
REASON_AT_SITE = "suppressed at a site"
REASON_POOLED_MIN = "below the federation's min_cell_count"
# Bounds of what a site may send: counts JSON carries exactly, sums whose pooling cannot overflow a float.
_MAX_EXACT = 2**53
_MAX_MAGNITUDE = 1e300

_VALUE_COLS: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "crosstab": ("count",),
    "histogram": ("count",),
    "summary": ("n", "sum", "sum_sq"),
}
_INTEGER_COLS = frozenset({"count", "n"})
# A summary row's moments: pooled by Chan's combination when a site sends them (every version of
# protect_summary does), from Σx and Σx² when it does not.
_MOMENT_COLS = ("mean", "variance")


class CombineError(Exception):
    """Site answers cannot be pooled."""


class InvalidSiteAnswer(CombineError):
    """A site's released body is malformed or breaks its own disclosure rules; the site is not pooled."""

    def __init__(self, site: str, message: str) -> None:
        super().__init__(f"{site}: {message}")
        self.site = site


@dataclass(frozen=True)
class SiteTable:
    """One site's released answer, checked: its rows and the thresholds it declared."""

    site: str
    columns: list[str]
    rows: list[dict[str, Any]]
    min_cell_count: int
    round_to: int

    @classmethod
    def from_body(cls, site: str, body: Any, kind: str, group_by: Sequence[str]) -> SiteTable:
        """Validate a released body (InvalidSiteAnswer when it does not hold together)."""
        if not isinstance(body, dict) or body.get("kind") != kind:
            raise InvalidSiteAnswer(site, f"the answer is not a released {kind}")
        rows, columns, report = body.get("rows"), body.get("columns"), body.get("disclosure")
        if not isinstance(rows, list) or not isinstance(columns, list) or not isinstance(report, dict):
            raise InvalidSiteAnswer(site, "the answer lacks rows, columns or its disclosure report")
        minimum, round_to = report.get("min_cell_count"), report.get("round_to")
        if not isinstance(minimum, int) or minimum < 1 or not isinstance(round_to, int) or round_to < 1:
            raise InvalidSiteAnswer(site, "the disclosure report has no valid min_cell_count/round_to")
        needed = {*group_by, *_VALUE_COLS[kind], "suppressed"}
        if not needed <= set(columns):
            raise InvalidSiteAnswer(site, f"the answer lacks columns {sorted(needed - set(columns))}")
        for row in rows:
            if not isinstance(row, dict) or not needed <= set(row) or not isinstance(row["suppressed"], bool):
                raise InvalidSiteAnswer(site, "a row lacks a column or its suppressed flag")
            for col in _VALUE_COLS[kind]:
                value = row[col]
                if row["suppressed"]:
                    if value is not None:
                        raise InvalidSiteAnswer(site, "a suppressed row carries a value")
                    continue
                if col in _INTEGER_COLS:
                    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_EXACT:
                        raise InvalidSiteAnswer(site, f"{col} is not a non-negative integer below 2^53")
                    if 0 < value < minimum:
                        raise InvalidSiteAnswer(site, f"{col} below the site's own min_cell_count")
                elif not _finite(value):
                    raise InvalidSiteAnswer(site, f"{col} is not a finite number")
            if kind == "summary":
                _check_moments(site, row)
            if not all(map(is_label, row.values())):
                # Group values, margins, bins and any other column are pooled and hashed as they came.
                raise InvalidSiteAnswer(site, "a value is not a single text, number or flag JSON can carry")
        return cls(site, [str(c) for c in columns], rows, minimum, round_to)


def is_label(value: Any) -> bool:
    """Whether a value of a site's row is one a pooled answer can carry and its result hash (RFC 8785) can
    hold: None, a flag, text UTF-8 can hold, an integer within 2**53 - 1, or a finite number."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return is_text(value)
    if isinstance(value, int):
        return abs(value) <= _MAX_EXACT - 1
    return isinstance(value, float) and math.isfinite(value)


def _finite(value: Any) -> bool:
    """A JSON number within what pooling can sum (an integer is compared as such: 10**400 has no float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return abs(value) <= _MAX_MAGNITUDE
    return math.isfinite(value) and abs(value) <= _MAX_MAGNITUDE


@dataclass(frozen=True)
class PooledTable:
    """The pooled rows, in the sites' column layout, and what the pooling hid."""

    columns: list[str]
    rows: list[dict[str, Any]]
    min_cell_count: int
    suppressed: int
    reasons: list[str] = field(default_factory=list)

    def disclosure(self) -> dict[str, Any]:
        """The pooled table's disclosure report."""
        return {"min_cell_count": self.min_cell_count, "suppressed": self.suppressed, "reasons": self.reasons}


def key_columns(kind: str, group_by: Sequence[str]) -> list[str]:
    """The columns that identify one entry of a kind's table."""
    if kind == "histogram":
        return [*group_by, "bin"]
    if kind in ("count", "crosstab"):
        return [*group_by, "margin"]
    return list(group_by)


def combine(kind: PoolKind, group_by: Sequence[str], tables: Sequence[SiteTable]) -> PooledTable:
    """Pool released tables of one kind under the conservative semantics above.

    CombineError when a pooled number is beyond what the answer can carry (sites' values near the 1e300
    bound, whose sums or centred squares no double holds): the sites' numbers are sound, their pool is not.
    """
    if not tables:
        raise CombineError("no site answered; there is nothing to pool")
    keys = key_columns(kind, group_by)
    values = _VALUE_COLS[kind]
    minimum = max(t.min_cell_count for t in tables)
    folded = merged_levels(group_by, tables)
    # Each site's rows by pooled key: a site may have several once levels are folded into "(other)".
    indexed: list[dict[tuple[Any, ...], list[dict[str, Any]]]] = []
    order: dict[tuple[Any, ...], dict[str, Any]] = {}
    for table in tables:
        index: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for original in table.rows:
            part = _fold(original, folded)
            key = tuple(part.get(k) for k in keys)
            index.setdefault(key, []).append(part)
            order.setdefault(key, part)
        indexed.append(index)
    columns = tables[0].columns
    rows: list[dict[str, Any]] = []
    hidden_at_site = hidden_small = 0
    for key, template in order.items():
        row = {c: template.get(c) for c in columns}
        sums: dict[str, int | float] = {c: 0 if c in _INTEGER_COLS else 0.0 for c in values}
        moments: list[tuple[float, float, float]] = []
        # A key a site lacks is a level it does not have: a known zero there. One part any site hid hides
        # the pooled entry.
        parts = [part for index in indexed for part in index.get(key, ())]
        hidden = any(part["suppressed"] for part in parts)
        if not hidden:
            for part in parts:
                for col in values:
                    sums[col] += int(part[col]) if col in _INTEGER_COLS else float(part[col])
                if kind == "summary":
                    moments.append(_site_moments(part))
        size_col = values[0]
        small = not hidden and 0 < sums[size_col] < minimum
        if hidden or small:
            hidden_at_site += hidden
            hidden_small += small
            row.update(dict.fromkeys(set(columns) - set(keys) - {"lower", "upper"}, None))
            row["suppressed"] = True
            row["suppression_reason"] = REASON_AT_SITE if hidden else REASON_POOLED_MIN
        else:
            row.update(sums)
            if kind == "summary":
                row.update(_moments(int(sums["n"]), float(sums["sum"]), moments))
            if not all(is_label(row[c]) for c in (*values, *_MOMENT_COLS) if c in row):
                raise CombineError("a pooled value is beyond what a number can hold")
            row["suppressed"] = False
            row["suppression_reason"] = None
        rows.append(row)
    return PooledTable(
        columns,
        rows,
        minimum,
        hidden_at_site + hidden_small,
        _reasons(kind, hidden_at_site, hidden_small, minimum, tables, folded),
    )


def merged_levels(group_by: Sequence[str], tables: Sequence[SiteTable]) -> dict[str, frozenset[Any]]:
    """Per group column, the levels pooled as "(other)": those a site with an "(other)" in that column does
    not show, which may lie inside its "(other)".

    A site merges a rare level whole (every row of it, by the level's total), and its tables lay every
    level it kept on the full grid, a suppressed entry keeping its label: a level it shows anywhere in a
    column is one it did not merge. A site without "(other)" in a column merged nothing there, and a level
    it lacks is a known zero. The null level is never merged.
    """
    folded: dict[str, frozenset[Any]] = {}
    for col in group_by:
        shown = [{row.get(col) for row in t.rows} for t in tables]
        pooled = set().union(*shown) - {None, OTHER}
        hidden = {level for levels in shown if OTHER in levels for level in pooled - levels}
        if hidden:
            folded[col] = frozenset(hidden)
    return folded


def _fold(row: dict[str, Any], folded: dict[str, frozenset[Any]]) -> dict[str, Any]:
    """A site's row with every group value the pool merges relabelled "(other)"."""
    relabelled = {col: OTHER for col, levels in folded.items() if row.get(col) in levels}
    return {**row, **relabelled} if relabelled else row


def _check_moments(site: str, row: dict[str, Any]) -> None:
    """A summary row's `mean` and `variance`, when it has them: null on a suppressed row, else null or a
    finite number (the variance not negative), or the site answer is invalid."""
    for col in _MOMENT_COLS:
        value = row.get(col)
        if value is None:
            continue
        if row["suppressed"]:
            raise InvalidSiteAnswer(site, "a suppressed row carries a value")
        if not _finite(value):
            raise InvalidSiteAnswer(site, f"{col} is not a finite number")
        if col == "variance" and value < 0:
            raise InvalidSiteAnswer(site, "a variance is negative")


def _site_moments(part: dict[str, Any]) -> tuple[float, float, float]:
    """One site's (n, mean, M2) for a group: M2 = variance·(n − 1), the sum of squared deviations.

    The site's own mean and variance are used when it sent them: it computed the variance from its rows
    (the store's var_samp), while Σx² − (Σx)²/n cancels catastrophically when the mean is large beside the
    spread. A null variance means the site's group had fewer than two rows (its n may be rounded up):
    M2 = 0. A row without the moment columns falls back to its sums. Floats throughout: an integer sum
    near 1e300 squared has no float, and a product beyond a double is infinite, refused by the caller.
    """
    n = float(part["n"])
    if n == 0:
        return 0.0, 0.0, 0.0
    total = float(part["sum"])
    mean = part.get("mean")
    mean = total / n if mean is None else float(mean)
    if "variance" in part:
        variance = part["variance"]
        m2 = float(variance) * (n - 1) if variance is not None and n > 1 else 0.0
    else:
        share = total * total / n
        # Clamped at 0: Σx² − (Σx)²/n can dip below zero by rounding for near-constant groups.
        m2 = max(float(part["sum_sq"]) - share, 0.0) if math.isfinite(share) else math.inf
    if not math.isfinite(m2):
        raise CombineError("a site's spread is beyond what a number can hold")
    return n, mean, m2


def _moments(n: int, total: float, parts: Sequence[tuple[float, float, float]]) -> dict[str, float | None]:
    """The pooled mean, Σsum / Σn, and the sample variance by Chan's combination of the sites' parts:
    M2 = Σ M2ᵢ + Σ nᵢ·(meanᵢ − m)², m the n-weighted mean of the site means. Every term is a centred
    square, so pooling adds no cancellation to what the sites computed.

    Sites' values beyond ~1e150 have squares no double holds: fsum then overflows (OverflowError) or meets
    infinities of both signs (ValueError), and the pool is refused (CombineError), never an error of
    arithmetic escaping to the caller."""
    if not n:
        return {"mean": None, "variance": None}
    try:
        size = math.fsum(p[0] for p in parts)
        centre = math.fsum(p[0] * p[1] for p in parts) / size if size else 0.0
        spread = math.fsum(p[2] + p[0] * ((p[1] - centre) * (p[1] - centre)) for p in parts)
    except (OverflowError, ValueError):
        spread = math.inf
    if not math.isfinite(spread):
        raise CombineError("a pooled variance is beyond what a number can hold")
    return {"mean": total / n, "variance": spread / (n - 1) if n > 1 else None}


def _reasons(
    kind: str,
    at_site: int,
    small: int,
    minimum: int,
    tables: Sequence[SiteTable],
    folded: dict[str, frozenset[Any]],
) -> list[str]:
    unit = "group" if kind == "summary" else "entry"
    reasons = [
        f"{at_site} pooled {unit}(s) hidden because a site suppressed them"
        if at_site
        else "no site suppressed an entry of the pooled table",
        f"{small} pooled {unit}(s) below the federation's minimum of {minimum} hidden"
        if small
        else f"every released pooled count passes the federation's minimum of {minimum}",
    ]
    if folded:
        merged = sum(len(levels) for levels in folded.values())
        reasons.append(
            f"{merged} level(s) pooled into {OTHER}: a site merged its rare levels there, and a pooled level "
            "sums only that level's own rows"
        )
    rounded = sorted({t.round_to for t in tables if t.round_to > 1})
    if rounded:
        reasons.append(f"pooled from counts that sites rounded to multiples of {rounded}")
    return reasons
