"""Rare levels of a group column: a level held by fewer than min_cell_count rows never names itself in an
answer. A suppressed cell hides its count, but its label would still show that the value exists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from pseudonymize.disclosure.report import ProtectedTable
from pseudonymize.disclosure.rules import DisclosureRules

OTHER = "(other)"
_ADDITIVE = ("n", "sum", "sum_sq")


def recode_rare_levels(
    frame: pd.DataFrame, groups: list[str], rules: DisclosureRules, *, merge: bool
) -> pd.DataFrame:
    """Levels of a group column held by fewer than min_cell_count rows never appear in an answer.

    A suppressed cell hides its count, but its label would still show that the value exists (a group-by
    on a lab value would list every patient's result). Rare levels are merged into one "(other)" level, so
    the groups lie on the grid a count of the same query has and their sizes are protected alike. With
    `merge`, the additive statistics are summed (n, sum, sum_sq) and a `variance` beside them is pooled
    from the merged groups' sizes, means and variances (`_pooled_variance`). Without (quantiles, which do
    not add up), only `n` is summed, and every other statistic of a group labelled "(other)" is NaN:
    withheld. Dropping the rare groups instead would let the ungrouped answer's n minus the groups' give
    them back.
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
    keys = [*groups, *(["bin"] if "bin" in recoded.columns else [])]
    if merge:
        additive = [c for c in recoded.columns if c in _ADDITIVE]
        merged_frame = recoded.groupby(keys, dropna=False, sort=False)[additive].sum().reset_index()
        if "variance" in recoded.columns and {"n", "sum"} <= set(additive):
            merged_frame["variance"] = _pooled_variance(recoded, keys)
        return merged_frame
    # Every row labelled "(other)" loses its statistics, a level that is itself named so included: it is
    # merged with the rare ones. A group of any other label is one executor row and keeps its own.
    merged = _labelled_other(recoded, groups)
    statistics = [c for c in recoded.columns if c not in keys and c != "n"]
    for column in statistics:
        recoded[column] = recoded[column].where(~merged)
    grouped = recoded.groupby(keys, dropna=False, sort=False)
    out = grouped["n"].sum(min_count=1).to_frame()
    for column in statistics:
        out[column] = grouped[column].first()
    return out.reset_index()


def _pooled_variance(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Sample variance of each merged group, in the order `groupby(keys, sort=False)` gives the groups.

    Chan's combination of the parts: M2 = Σ M2ᵢ + Σ nᵢ·(meanᵢ − mean)², with M2ᵢ = varianceᵢ·(nᵢ − 1) and
    meanᵢ = sumᵢ/nᵢ. Every term is a centred square, so nothing cancels as Σsum_sq − (Σsum)²/Σn would
    when the mean is large beside the spread. A part of one row has no variance (NULL): its M2ᵢ is 0.
    A part of more rows without one leaves its merged group's variance NaN (protect_summary then uses
    the sums).
    """
    ids = frame.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    groups = int(ids.max()) + 1
    n = frame["n"].to_numpy(dtype=np.float64)
    means = frame["sum"].to_numpy(dtype=np.float64) / np.maximum(n, 1.0)
    spread = pd.to_numeric(frame["variance"]).astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    m2 = np.where(n > 1, spread * (n - 1), 0.0)
    size = np.bincount(ids, weights=n, minlength=groups)
    centre = np.bincount(ids, weights=n * means, minlength=groups) / np.maximum(size, 1.0)
    total = np.bincount(ids, weights=m2 + n * (means - centre[ids]) ** 2, minlength=groups)
    return np.where(size > 1, total / np.maximum(size - 1, 1.0), np.nan)


def withhold_merged_quantiles(
    table: ProtectedTable, groups: Sequence[str], value_cols: Sequence[str], rules: DisclosureRules
) -> ProtectedTable:
    """No group labelled "(other)" shows a quantile; the report says so for such a group whose n is shown.

    The merged rows' quantiles do not combine from the levels' own, and a level's quantile would describe
    a group too small to name. `recode_rare_levels(merge=False)` leaves them NaN already; this makes sure of
    it on the protected table and tells the researcher why a released group has no quantile.
    """
    frame = table.frame
    merged = _labelled_other(frame, groups)
    if not merged.any():
        return table
    shown = merged & ~frame["suppressed"].to_numpy(dtype=bool)
    withheld = frame.copy()
    for column in value_cols:
        withheld[column] = withheld[column].astype("Float64").mask(merged)
    if not shown.any():
        return ProtectedTable(withheld, table.report)
    note = (
        f"quantiles of {int(shown.sum())} {OTHER} group(s) withheld: they merge levels held by fewer than "
        f"{rules.min_cell_count} rows each, whose quantiles do not combine"
    )
    return ProtectedTable(withheld, replace(table.report, reasons=(*table.report.reasons, note)))


def _labelled_other(frame: pd.DataFrame, groups: Sequence[str]) -> np.ndarray:
    """Rows whose label in any group column is "(other)"."""
    merged = np.zeros(len(frame), dtype=bool)
    for column in groups:
        merged |= frame[column].astype(object).eq(OTHER).to_numpy(dtype=bool)
    return merged


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
