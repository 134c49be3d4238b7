"""Disclosure control applied to an executed query: the obligations' thresholds, one rule set per kind.

Turns the executor's frame into what may leave the site — rows with suppressed values as null and flags
saying why — or raises a `DisclosureError` (query set or its complement too small).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
from pseudonymize.disclosure.levels import has_rare_level, recode_rare_levels, withhold_merged_quantiles


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
    if plain is not None and not (groups and has_rare_level(plain, groups, rules.min_cell_count)):
        # No level to merge: the executor's Python rows become the released table without pandas.
        margins = spec.kind == "crosstab" or bool(groups)
        table = protect_count_columns(plain, groups, rules, margins=margins, count_col="n")
        return _released(table)
    frame = recode_rare_levels(outcome.frame, groups, rules, merge=spec.kind != "quantiles")
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
        # Rare levels are in "(other)" (sizes summed, quantiles NaN): n is protected on the grid a count of
        # the same query has, and no "(other)" group shows a quantile.
        quantile_cols = [quantile_name(p) for p in spec.params.probs]
        table = protect_quantiles(
            frame, groups, rules, value_cols=quantile_cols, probs=list(spec.params.probs)
        )
        table = withhold_merged_quantiles(table, groups, quantile_cols, rules)
    else:
        assert isinstance(spec, HistogramQuery)
        table = _histogram(spec, frame, groups, rules)
    return _released(table)


def _released(table: ProtectedTable) -> Released:
    body = {"columns": [str(c) for c in table.column_names], **table.to_dict()}
    report = table.report
    return Released(body, report.cells, report.suppressed)


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
