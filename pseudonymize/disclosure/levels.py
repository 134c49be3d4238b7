"""Rare levels of a group column: a level held by fewer than min_cell_count rows never names itself in an
answer. A suppressed cell hides its count, but its label would still show that the value exists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pseudonymize.disclosure.rules import DisclosureRules

OTHER = "(other)"
_ADDITIVE = ("n", "sum", "sum_sq")


def recode_rare_levels(
    frame: pd.DataFrame, groups: list[str], rules: DisclosureRules, *, merge: bool
) -> pd.DataFrame:
    """Levels of a group column held by fewer than min_cell_count rows never appear in an answer.

    A suppressed cell hides its count, but its label would still show that the value exists (a group-by
    on a lab value would list every patient's result). Rare levels are merged into one "(other)" level
    (additive statistics are summed), or, for quantiles, which do not add up, their groups are dropped.
    """
    if not groups or frame.empty or not has_rare_level(frame, groups, rules.min_cell_count):
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


def has_rare_level(
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
