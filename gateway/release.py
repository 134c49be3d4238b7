"""Disclosure control applied to an executed query: the obligations' thresholds, one rule set per kind.

Turns the executor's frame into what may leave the site — rows with suppressed values as null and flags
saying why — or raises a `DisclosureError` (query set or its complement too small).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from gateway.decision import Obligations
from gateway.query import (
    HistogramQuery,
    KaplanMeierQuery,
    QuantilesQuery,
    QueryOutcome,
    QuerySpec,
    quantile_name,
)
from pseudonymize.disclosure import (
    DisclosureRules,
    ProtectedTable,
    check_query_set,
    protect_count_columns,
    protect_counts,
    protect_histogram,
    protect_quantiles,
    protect_summary,
)
from pseudonymize.disclosure.km_bins import protect_survival


@dataclass(frozen=True)
class Released:
    """The releasable part of an answer and what disclosure control hid."""

    body: dict[str, Any]
    cells: int
    suppressed: int


def protect(spec: QuerySpec, outcome: QueryOutcome, obligations: Obligations) -> Released:
    """Check the query set, protect the table for its kind, and shape it as JSON."""
    rules = DisclosureRules.from_obligations(obligations)
    check_query_set(outcome.selected, outcome.population, rules)
    groups = list(spec.group_by)
    table: ProtectedTable
    plain = outcome.plain if spec.kind in ("count", "crosstab") else None
    if plain is not None and not (groups and _has_rare_level(plain, groups, rules.min_cell_count)):
        # No level to merge: the executor's Python rows become the released table without pandas.
        margins = spec.kind == "crosstab" or bool(groups)
        table = protect_count_columns(plain, groups, rules, margins=margins, count_col="n")
        return _released(table)
    frame = _recode_rare_levels(outcome.frame, groups, rules, merge=spec.kind != "quantiles")
    if spec.kind == "count":
        table = protect_counts(frame, groups, rules, margins=bool(groups), count_col="n")
    elif spec.kind == "crosstab":
        table = protect_counts(frame, groups, rules, margins=True, count_col="n")
    elif spec.kind == "summary":
        table = protect_summary(frame, groups, rules)
    elif isinstance(spec, KaplanMeierQuery):
        table = protect_survival(spec.params.edges, frame, rules)
    elif spec.kind == "quantiles":
        assert isinstance(spec, QuantilesQuery)
        quantile_cols = [quantile_name(p) for p in spec.params.probs]
        table = protect_quantiles(
            frame, groups, rules, value_cols=quantile_cols, probs=list(spec.params.probs)
        )
    else:
        assert isinstance(spec, HistogramQuery)
        table = _histogram(spec, frame, groups, rules)
    return _released(table)


def _released(table: ProtectedTable) -> Released:
    body = {"columns": [str(c) for c in table.column_names], **table.to_dict()}
    report = table.report
    return Released(body, report.cells, report.suppressed)


OTHER = "(other)"
_ADDITIVE = ("n", "sum", "sum_sq")


def _recode_rare_levels(
    frame: pd.DataFrame, groups: list[str], rules: DisclosureRules, *, merge: bool
) -> pd.DataFrame:
    """Levels of a group column held by fewer than min_cell_count rows never appear in an answer.

    A suppressed cell hides its count, but its label would still show that the value exists (a group-by
    on a lab value would list every patient's result). Rare levels are merged into one "(other)" level
    (additive statistics are summed), or, for quantiles, which do not add up, their groups are dropped.
    """
    if not groups or frame.empty or not _has_rare_level(frame, groups, rules.min_cell_count):
        return frame
    rare_rows = pd.Series(False, index=frame.index)
    recoded = frame.copy()
    for column in groups:
        totals = frame.groupby(column, dropna=False)["n"].transform("sum")
        rare = (totals < rules.min_cell_count) & frame[column].notna()
        if rare.any():
            rare_rows |= rare
            recoded[column] = recoded[column].astype(object).where(~rare, OTHER)
    if not rare_rows.any():
        return frame
    if not merge:
        return frame[~rare_rows].reset_index(drop=True)
    additive = [c for c in recoded.columns if c in _ADDITIVE]
    keys = [*groups, *(["bin"] if "bin" in recoded.columns else [])]
    return recoded.groupby(keys, dropna=False, sort=False)[additive].sum().reset_index()


def _has_rare_level(
    frame: pd.DataFrame | Mapping[str, Sequence[Any]], groups: list[str], min_cell_count: int
) -> bool:
    """Whether any non-null level of a group column totals fewer than min_cell_count rows.

    The common answer is no; plain dictionaries decide it in microseconds where pandas' group-by costs a
    millisecond on the small frames queries return. `frame` may be the executor's Python columns.
    """

    def values(name: str) -> list[Any]:
        return frame[name].tolist() if isinstance(frame, pd.DataFrame) else list(frame[name])

    counts = values("n")
    if any(_missing(n) for n in counts):
        return True  # let the full path decide
    for column in groups:
        totals: dict[Any, int] = {}
        for value, n in zip(values(column), counts, strict=True):
            if _missing(value):  # the null level is never merged
                continue
            totals[value] = totals.get(value, 0) + int(n)
        if any(total < min_cell_count for total in totals.values()):
            return True
    return False


def _missing(value: Any) -> bool:
    """pd.isna for one scalar of a frame's `tolist()`, without its dispatch (it ran once per group)."""
    return value is None or value is pd.NA or value is pd.NaT or bool(value != value)


def _histogram(spec: HistogramQuery, frame: Any, groups: list[str], rules: DisclosureRules) -> ProtectedTable:
    edges = list(spec.params.edges)
    # Every bin is shown, empty ones included, so the released bins always add up to the group's total.
    bins = list(range(len(edges) + 1))
    counts = frame[[*groups, "bin", "n"]]
    table = protect_histogram(counts, [*groups, "bin"], rules, count_col="n", levels={"bin": bins})
    bounds: list[float | None] = [None, *edges, None]
    shaped = table.frame.copy()
    position = list(shaped.columns).index("bin") + 1
    shaped.insert(position, "lower", [bounds[int(b)] for b in shaped["bin"]])
    shaped.insert(position + 1, "upper", [bounds[int(b) + 1] for b in shaped["bin"]])
    return ProtectedTable(shaped, table.report)
