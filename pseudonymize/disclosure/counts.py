"""Protect counts and cross-tabulations (with margins) and histograms before release."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pseudonymize.disclosure.grid import Grid, build_grid, build_grid_from_columns, integer_counts
from pseudonymize.disclosure.report import REASON_FOR, DisclosureReport, ProtectedTable, explain
from pseudonymize.disclosure.rules import DisclosureRules
from pseudonymize.disclosure.suppression import LineSystem, Status, suppress


def protect_counts(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    rules: DisclosureRules,
    *,
    margins: bool,
    count_col: str = "count",
    levels: Mapping[str, Sequence[Any]] | None = None,
) -> ProtectedTable:
    """Suppress small cells and their complements, add margins if asked, round what is released.

    The grid of observed levels (or of `levels`, e.g. every bin) is completed so absent combinations are
    explicit zero cells. Complementary suppression always assumes the margins are known, because a coarser
    query would give them; `margins` only decides whether they are printed. Output columns: the group
    columns (None where a margin sums over that column), `count` (NA when suppressed), `suppressed`,
    `suppression_reason` and `margin` (None for a cell, else "row", "column" or "total").
    """
    return _protect_grid(build_grid(df, group_cols, [count_col], levels), rules, margins, count_col)


def protect_count_columns(
    columns: Mapping[str, Sequence[Any]],
    group_cols: Sequence[str],
    rules: DisclosureRules,
    *,
    margins: bool,
    count_col: str = "count",
) -> ProtectedTable:
    """`protect_counts` over Python columns (group values or None, whole counts): no DataFrame is built
    unless the table's `frame` is asked for."""
    grid = build_grid_from_columns(columns, group_cols, [count_col])
    return _protect_grid(grid, rules, margins, count_col)


def _protect_grid(grid: Grid, rules: DisclosureRules, margins: bool, count_col: str) -> ProtectedTable:
    counts = integer_counts(grid.arrays[count_col], count_col)
    system = LineSystem.for_grid(counts)
    status = suppress(system, rules)
    shown = _layout(grid, margins)
    return _table("count", grid, system, status, shown, rules)


def protect_histogram(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    rules: DisclosureRules,
    *,
    count_col: str = "count",
    levels: Mapping[str, Sequence[Any]] | None = None,
) -> ProtectedTable:
    """Counts per bin, protected like a table whose total is known; pass `levels` to show every bin."""
    grid = build_grid(df, group_cols, [count_col], levels)
    counts = integer_counts(grid.arrays[count_col], count_col)
    system = LineSystem.for_grid(counts)
    status = suppress(system, rules)
    return _table("histogram", grid, system, status, _layout(grid, False), rules)


def _layout(grid: Grid, margins: bool) -> list[tuple[int, tuple[Any, ...], str | None]]:
    """(entry index, group values, margin label) of every row to print, in LineSystem entry order."""
    labels = grid.cell_labels()
    rows: list[tuple[int, tuple[Any, ...], str | None]] = [(i, lab, None) for i, lab in enumerate(labels)]
    dims = len(grid.shape)
    if not margins or dims == 0:
        return rows
    inner = len(labels)
    if dims == 2:
        row_levels, col_levels = grid.levels
        rows += [(inner + r, (lv, None), "row") for r, lv in enumerate(row_levels)]
        base = inner + len(row_levels)
        rows += [(base + c, (None, lv), "column") for c, lv in enumerate(col_levels)]
        rows.append((base + len(col_levels), (None, None), "total"))
    else:
        rows.append((inner, (None,) * dims, "total"))
    return rows


def _table(
    kind: str,
    grid: Grid,
    system: LineSystem,
    status: list[Status],
    shown: list[tuple[int, tuple[Any, ...], str | None]],
    rules: DisclosureRules,
) -> ProtectedTable:
    data: dict[str, list[Any]] = {col: [] for col in grid.group_cols}
    counts: list[Any] = []
    flags: list[bool] = []
    reasons: list[str | None] = []
    margin: list[str | None] = []
    for entry, labels, label in shown:
        for col, value in zip(grid.group_cols, labels, strict=True):
            data[col].append(value)
        hidden = status[entry] != Status.RELEASED
        counts.append(pd.NA if hidden else rules.round(system.values[entry]))
        flags.append(hidden)
        reasons.append(REASON_FOR[status[entry]])
        margin.append(label)
    # Released as Python columns; the DataFrame is built only for a caller that asks for `frame`. A group
    # column named like a result column gives way to it, as in a dict of columns.
    columns: dict[str, list[Any]] = {
        **data,
        "count": counts,
        "suppressed": flags,
        "suppression_reason": reasons,
        "margin": margin,
    }
    shown_status = [status[entry] for entry, _, _ in shown]
    primary = shown_status.count(Status.PRIMARY)
    complementary = shown_status.count(Status.COMPLEMENTARY)
    n_margins = sum(1 for _, _, label in shown if label is not None)
    report = DisclosureReport(
        kind=kind,
        cells=len(shown) - n_margins,
        margins=n_margins,
        suppressed_primary=primary,
        suppressed_complementary=complementary,
        min_cell_count=rules.min_cell_count,
        round_to=rules.round_to,
        reasons=explain("cell", primary, complementary, rules, hidden_part="", rounded="released counts"),
    )
    return ProtectedTable.from_columns(columns, report, _count_frame)


def _count_frame(columns: Mapping[str, list[Any]]) -> pd.DataFrame:
    # One constructor call: adding columns one by one costs more than the whole suppression on small tables.
    return pd.DataFrame({name: _typed(name, values) for name, values in columns.items()}, copy=False)


def _typed(name: str, values: list[Any]) -> Any:
    if name == "count":
        return pd.array(values, dtype="Int64")
    if name == "suppressed":
        return np.array(values, dtype=bool)
    return _objects(values)


def _objects(values: list[Any]) -> np.ndarray:
    """An object column as a plain array (a pd.Series per column cost more than the whole suppression)."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: a slice assignment would unpack a tuple-valued label
        column[i] = value
    return column
