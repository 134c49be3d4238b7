"""What disclosure control released and why: the protected table, its report, JSON-ready records."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Final

import numpy as np
import pandas as pd

from pseudonymize.disclosure.rules import DisclosureRules
from pseudonymize.disclosure.suppression import Status

# Stable values of the `suppression_reason` column; the report says the same in sentences.
REASON_BELOW_MIN: Final = "below min_cell_count"
REASON_COMPLEMENTARY: Final = "complementary"
REASON_FOR: Final = {
    Status.RELEASED: None,
    Status.PRIMARY: REASON_BELOW_MIN,
    Status.COMPLEMENTARY: REASON_COMPLEMENTARY,
}


@dataclass(frozen=True)
class DisclosureReport:
    """Counts of what was hidden, the thresholds applied, and the reasons as a researcher reads them."""

    kind: str
    cells: int
    margins: int
    suppressed_primary: int
    suppressed_complementary: int
    min_cell_count: int
    round_to: int
    reasons: tuple[str, ...]

    @property
    def suppressed(self) -> int:
        """Every hidden entry, whatever the reason."""
        return self.suppressed_primary + self.suppressed_complementary

    @property
    def rounded(self) -> bool:
        """Whether released counts were rounded (round_to above 1)."""
        return self.round_to > 1

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with its totals."""
        # Field by field rather than dataclasses.asdict, whose deep copies cost more than the suppression.
        return {
            **{name: getattr(self, name) for name in _REPORT_FIELDS},
            "reasons": list(self.reasons),
            "suppressed": self.suppressed,
            "rounded": self.rounded,
        }


_REPORT_FIELDS: Final = tuple(f.name for f in fields(DisclosureReport))


def explain(
    unit: str,
    primary: int,
    complementary: int,
    rules: DisclosureRules,
    *,
    hidden_part: str,
    rounded: str | None,
) -> tuple[str, ...]:
    """Sentences such as "3 cells below the minimum of 10 suppressed; 2 more ...", no value ever named."""
    m = rules.min_cell_count
    reasons: list[str] = []
    if primary:
        plural = unit if primary == 1 else unit + "s"
        reasons.append(f"{primary} {plural} below the minimum of {m} suppressed{hidden_part}")
    else:
        reasons.append(f"no {unit} below the minimum of {m}; nothing suppressed for size")
    if complementary:
        reasons.append(
            f"{complementary} more suppressed so that the suppressed ones cannot be recovered from the totals"
        )
    if rules.keep_zero_cells:
        reasons.append("zero counts are shown as zero, as the agreement allows")
    if rounded and rules.round_to > 1:
        reasons.append(f"{rounded} rounded to the nearest multiple of {rules.round_to}")
    return tuple(reasons)


_AS_IS: Final = frozenset({str, int, bool, type(None)})


def _json_value(value: Any) -> Any:
    """A cell as JSON sees it: None for any missing value, ISO text for dates, numbers for decimals."""
    if type(value) in _AS_IS:  # most cells, so tested first
        return value
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.date | dt.time):  # pd.Timestamp is a datetime, a datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):  # PostgreSQL numerics arrive as Decimal
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class ProtectedTable:
    """The releasable table (hidden values are NA, never the number) and its disclosure report.

    A table made `from_columns` keeps Python columns and builds its DataFrame only when `frame` is first
    asked for: a small answer goes to JSON without pandas, where a DataFrame would cost more than the
    suppression itself.
    """

    __slots__ = ("_build", "_columns", "_frame", "report")

    def __init__(self, frame: pd.DataFrame, report: DisclosureReport) -> None:
        self._frame: pd.DataFrame | None = frame
        self._columns: Mapping[str, list[Any]] | None = None
        self._build: Callable[[Mapping[str, list[Any]]], pd.DataFrame] | None = None
        self.report = report

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, list[Any]],
        report: DisclosureReport,
        build: Callable[[Mapping[str, list[Any]]], pd.DataFrame],
    ) -> ProtectedTable:
        """A table of equally long columns by name; `build(columns)` makes its DataFrame when needed."""
        table = cls.__new__(cls)
        table._frame, table._columns, table._build, table.report = None, columns, build, report
        return table

    @property
    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame (group columns, then the kind's released columns)."""
        if self._frame is None:
            assert self._columns is not None and self._build is not None
            self._frame = self._build(self._columns)
        return self._frame

    @property
    def column_names(self) -> list[Any]:
        """The column labels, in order, without building the DataFrame."""
        return list(self._columns) if self._columns is not None else list(self.frame.columns)

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as JSON-ready dicts: Python scalars, None for every suppressed or undefined value."""
        if self._columns is not None:
            names = list(self._columns)
            rows = zip(*self._columns.values(), strict=True)
            return [dict(zip(names, map(_json_value, row), strict=True)) for row in rows]
        columns = list(self.frame.columns)
        # One conversion of the whole frame to Python objects: indexing it column by column costs pandas
        # about 100 µs a column, more than the rest of a small answer's release.
        values = self.frame.to_numpy(dtype=object).tolist()
        return [dict(zip(columns, map(_json_value, row), strict=True)) for row in values]

    def to_dict(self) -> dict[str, Any]:
        """The whole answer as JSON-ready data: its rows and what disclosure control did."""
        return {"rows": self.to_records(), "disclosure": self.report.to_dict()}
