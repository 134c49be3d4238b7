"""Kaplan–Meier counts per time bin, coarsened by merging adjacent bins until every released count passes.

A site counts, for bins (−∞, e₁], (e₁, e₂], …, (eₖ₋₁, eₖ], the events and censorings whose time falls in
the bin; the number at risk at the start of a bin is everyone whose time lies beyond the previous edge.
The bins close on the right as a histogram's do (gateway.query.compile): a time equal to an edge is in the
bin that edge ends in both kinds, so the same edges never split the rows two ways.
Released per merged bin: `at_risk` (at its start), `events` and `censored` (in it). Every one of these,
and the rows left beyond the last released edge (`at_risk − events − censored` of the last bin, which a
reader can compute), must pass the cell rule. Merging works left to right: a bin joins the next until
its events and censorings both pass; a tail that cannot pass is not released (those rows stay "beyond").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from pseudonymize.disclosure.errors import DisclosureError, InvalidAggregate
from pseudonymize.disclosure.report import DisclosureReport, ProtectedTable
from pseudonymize.disclosure.rules import DisclosureRules

KM_COLUMNS = ("lower", "upper", "at_risk", "events", "censored")


class SurvivalNotReleasable(DisclosureError):
    """No bin of the survival table can be released: too few events, censorings or rows at risk."""

    def __init__(self, min_cell_count: int) -> None:
        self.min_cell_count = min_cell_count
        super().__init__(
            f"no time bin can be released: even merged, the events, censorings or rows at risk stay below "
            f"{min_cell_count} (min_cell_count); use fewer, wider bins"
        )


class SurvivalNotRounded(DisclosureError):
    """The agreement rounds counts; rounded at-risk, event and censored counts would contradict each other."""

    def __init__(self, round_to: int) -> None:
        self.round_to = round_to
        super().__init__(
            f"the agreement rounds released counts to multiples of {round_to}; survival counts rounded "
            f"separately would not add up, so Kaplan–Meier is not released under it"
        )


@dataclass(frozen=True)
class SurvivalBin:
    """One released (possibly merged) bin: original bins first..last, i.e. times in (lower, upper]."""

    first: int
    last: int
    at_risk: int
    events: int
    censored: int


def coarsen_survival(
    total: int, events: Sequence[int], censored: Sequence[int], rules: DisclosureRules
) -> list[SurvivalBin]:
    """Merge adjacent bins until every released count passes; `total` is everyone at risk at the start.

    `events[j]` and `censored[j]` count bin j; rows beyond the last edge are `total − Σ events − Σ censored`.
    Raises SurvivalNotReleasable when no bin can be released."""
    if len(events) != len(censored):
        raise InvalidAggregate("events and censored must have one count per bin")
    if any(v < 0 for v in (*events, *censored)) or sum(events) + sum(censored) > total:
        raise InvalidAggregate("survival counts must be non-negative and add up to at most the total")
    released: list[SurvivalBin] = []
    at_risk, j, k = total, 0, len(events)
    while j < k and not rules.is_small(at_risk):
        first, d, c = j, 0, 0
        while j < k:
            d, c, j = d + events[j], c + censored[j], j + 1
            if not rules.is_small(d) and not rules.is_small(c):
                break
        if rules.is_small(d) or rules.is_small(c):
            break  # the tail never passes: it stays beyond the last released edge
        released.append(SurvivalBin(first, j - 1, at_risk, d, c))
        at_risk -= d + c
    # The rows beyond the last released edge are implied by the released counts, so they pass too;
    # dropping the last bin leaves its at-risk count (which passed) beyond.
    if released and rules.is_small(at_risk):
        released.pop()
    if not released:
        raise SurvivalNotReleasable(rules.min_cell_count)
    return released


def protect_survival(edges: Sequence[float], counts: pd.DataFrame, rules: DisclosureRules) -> ProtectedTable:
    """The releasable survival table from per-bin counts (`bin` 0..k, `n`, `events`; bin k is beyond eₖ).

    Rows: `lower` (None for the first bin), `upper`, `at_risk`, `events`, `censored`."""
    if rules.round_to > 1:
        raise SurvivalNotRounded(rules.round_to)
    k = len(edges)
    for name in ("bin", "n", "events"):
        if name not in counts.columns:
            raise InvalidAggregate(f"the survival counts lack the column {name!r}")
    per_bin = counts.groupby("bin")[["n", "events"]].sum()
    n = [int(per_bin["n"].get(b, 0)) for b in range(k + 1)]
    d = [int(per_bin["events"].get(b, 0)) for b in range(k + 1)]
    if any(d[b] > n[b] or n[b] < 0 for b in range(k + 1)):
        raise InvalidAggregate("a bin has more events than rows")
    bins = coarsen_survival(sum(n), d[:k], [n[b] - d[b] for b in range(k)], rules)
    frame = pd.DataFrame(
        {
            "lower": [None if b.first == 0 else float(edges[b.first - 1]) for b in bins],
            "upper": [float(edges[b.last]) for b in bins],
            "at_risk": [b.at_risk for b in bins],
            "events": [b.events for b in bins],
            "censored": [b.censored for b in bins],
        },
        columns=list(KM_COLUMNS),
    )
    merged = k - len(bins)
    reasons = [
        f"bins merged until every count of events, censorings and rows at risk reaches "
        f"{rules.min_cell_count}; {len(bins)} of {k} bins released"
    ]
    if merged == 0:
        reasons = [f"every bin has at least {rules.min_cell_count} events, censorings and rows at risk"]
    report = DisclosureReport(
        kind="kaplan_meier",
        cells=len(bins) * 3,
        margins=0,
        suppressed_primary=merged,
        suppressed_complementary=0,
        min_cell_count=rules.min_cell_count,
        round_to=rules.round_to,
        reasons=tuple(reasons),
    )
    return ProtectedTable(frame, report)
