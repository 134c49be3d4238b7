"""Errors of output disclosure control; a message names the rule and threshold, never a hidden value.

PseudonymizeError                   (pseudonymize.errors)
└── DisclosureError                 an answer cannot be released as asked
    ├── QuerySetTooSmall            the filtered set has fewer rows than min_cell_count
    ├── ComplementTooSmall          the filter leaves out between 1 and min_cell_count - 1 rows (a tracker)
    ├── UnprotectableTable          every cell that could be hidden is, and a small cell is still determined
    ├── WideTableWithHiddenCell     a table of three or more dimensions would need a cell hidden
    ├── InvalidRules                thresholds that cannot be applied (min_cell_count or round_to below 1)
    └── InvalidAggregate            the executor's table lacks the shape disclosure control needs
"""

from __future__ import annotations

from pseudonymize.errors import PseudonymizeError


class DisclosureError(PseudonymizeError):
    """Base of every refusal by disclosure control; `reason` is written for the researcher."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    @property
    def audit_reason(self) -> str:
        return self.reason


class QuerySetTooSmall(DisclosureError):
    """The rows a query selects are fewer than the minimum cell count."""

    def __init__(self, min_cell_count: int) -> None:
        self.min_cell_count = min_cell_count
        super().__init__(
            f"the query selects fewer than {min_cell_count} rows; an answer must rest on at least "
            f"{min_cell_count} rows (min_cell_count)"
        )


class ComplementTooSmall(DisclosureError):
    """The filter leaves out a group so small that comparing with the unfiltered answer would isolate it."""

    def __init__(self, min_cell_count: int) -> None:
        self.min_cell_count = min_cell_count
        super().__init__(
            f"the filter leaves out fewer than {min_cell_count} rows of the dataset; comparing its answer "
            f"with the unfiltered one would reveal that small group, so a filter must leave out none or at "
            f"least {min_cell_count} rows (min_cell_count)"
        )


class UnprotectableTable(DisclosureError):
    """So few rows over so many cells that the totals and labels pin a small cell whatever else is hidden."""

    def __init__(self, min_cell_count: int) -> None:
        self.min_cell_count = min_cell_count
        super().__init__(
            f"this table cannot be released: its rows are spread so thinly that the totals would reveal a "
            f"cell below the minimum of {min_cell_count} whatever else were hidden; group by fewer "
            f"columns or coarser levels"
        )


class WideTableWithHiddenCell(DisclosureError):
    """A table of three or more dimensions (group columns, and a histogram's bins) with a cell to hide.

    Its two-dimensional sub-tables are what coarser queries release, and each of their cells is a sum of a
    line of this table: hidden cells here would come back from those answers. Such a table is released
    only whole, when no cell needs hiding."""

    def __init__(self, min_cell_count: int) -> None:
        self.min_cell_count = min_cell_count
        super().__init__(
            f"a table of three or more dimensions is released only when none of its cells falls below "
            f"the minimum of {min_cell_count}: its two-column sub-tables, queried on their own, would give a "
            f"hidden cell back; group by fewer columns or coarser levels"
        )


class TableTooLarge(DisclosureError):
    """A table too large to lay out, or, with a cell to hide, to protect in bounded time."""

    def __init__(self, limit: int, *, to_hide: bool = True) -> None:
        self.limit = limit
        why = (
            "and a cell to hide, more than disclosure control protects in bounded time"
            if to_hide
            else "more than disclosure control lays out"
        )
        super().__init__(
            f"the table has more than {limit:,} entries (the levels of its group columns times its bins, "
            f"with their margins) {why}; group by fewer columns or coarser levels, or ask for fewer bins"
        )


class InvalidRules(DisclosureError):
    """Thresholds that cannot be applied; the gateway must refuse rather than release unprotected."""


class InvalidAggregate(DisclosureError):
    """The aggregate table handed to disclosure control is malformed (missing column, negative count...)."""
