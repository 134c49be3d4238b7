"""Output disclosure control: the rules every released number passes before it leaves the site.

Call `check_query_set` before running a filtered query's answer out, then one `protect_*` per analysis
kind; thresholds come from the policy decision's obligations through `DisclosureRules.from_obligations`.
"""

from pseudonymize.disclosure.counts import protect_count_columns, protect_counts, protect_histogram
from pseudonymize.disclosure.errors import (
    ComplementTooSmall,
    DisclosureError,
    InvalidAggregate,
    InvalidRules,
    QuerySetTooSmall,
    TableTooLarge,
    UnprotectableTable,
    WideTableWithHiddenCell,
)
from pseudonymize.disclosure.grid import MAX_GRID_CELLS
from pseudonymize.disclosure.groups import protect_quantiles, protect_summary
from pseudonymize.disclosure.query_set import check_query_set
from pseudonymize.disclosure.report import (
    REASON_BELOW_MIN,
    REASON_COMPLEMENTARY,
    DisclosureReport,
    ProtectedTable,
)
from pseudonymize.disclosure.rules import (
    DEFAULT_KEEP_ZERO_CELLS,
    DEFAULT_MIN_CELL_COUNT,
    DEFAULT_ROUND_TO,
    DisclosureRules,
    ThresholdObligations,
)
from pseudonymize.disclosure.suppression import MAX_SUPPRESSED_ENTRIES

__all__ = [
    "DEFAULT_KEEP_ZERO_CELLS",
    "DEFAULT_MIN_CELL_COUNT",
    "DEFAULT_ROUND_TO",
    "MAX_GRID_CELLS",
    "MAX_SUPPRESSED_ENTRIES",
    "REASON_BELOW_MIN",
    "REASON_COMPLEMENTARY",
    "ComplementTooSmall",
    "DisclosureError",
    "DisclosureReport",
    "DisclosureRules",
    "InvalidAggregate",
    "InvalidRules",
    "ProtectedTable",
    "QuerySetTooSmall",
    "TableTooLarge",
    "ThresholdObligations",
    "UnprotectableTable",
    "WideTableWithHiddenCell",
    "check_query_set",
    "protect_count_columns",
    "protect_counts",
    "protect_histogram",
    "protect_quantiles",
    "protect_summary",
]
