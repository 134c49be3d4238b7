"""Protect per-group statistics (summary, quantiles): a group below the minimum is suppressed whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from pseudonymize.disclosure.errors import InvalidAggregate
from pseudonymize.disclosure.grid import Grid, build_grid, integer_counts
from pseudonymize.disclosure.report import REASON_FOR, DisclosureReport, ProtectedTable, explain
from pseudonymize.disclosure.rules import DisclosureRules
from pseudonymize.disclosure.suppression import LineSystem, Status, suppress


def _group_status(grid: Grid, n_col: str, rules: DisclosureRules) -> tuple[np.ndarray, list[Status]]:
    """Suppression of each group by its size, with complements: sums add up to totals just as counts do."""
    n = integer_counts(grid.arrays[n_col], n_col)
    status = suppress(LineSystem.for_grid(n), rules)
    return n.reshape(-1), status[: n.size]


def _frame_start(grid: Grid) -> pd.DataFrame:
    labels = grid.cell_labels()
    return pd.DataFrame(
        {col: pd.Series([lab[i] for lab in labels], dtype=object) for i, col in enumerate(grid.group_cols)},
        index=range(len(labels)),
    )


def _finish(
    kind: str, frame: pd.DataFrame, status: list[Status], rules: DisclosureRules, hidden: str
) -> ProtectedTable:
    frame["suppressed"] = np.array([s != Status.RELEASED for s in status], dtype=bool)
    frame["suppression_reason"] = pd.Series([REASON_FOR[s] for s in status], dtype=object, index=frame.index)
    primary = status.count(Status.PRIMARY)
    complementary = status.count(Status.COMPLEMENTARY)
    report = DisclosureReport(
        kind=kind,
        cells=len(status),
        margins=0,
        suppressed_primary=primary,
        suppressed_complementary=complementary,
        min_cell_count=rules.min_cell_count,
        round_to=rules.round_to,
        reasons=explain("group", primary, complementary, rules, hidden_part=hidden, rounded="group sizes n"),
    )
    return ProtectedTable(frame, report)


def protect_summary(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    rules: DisclosureRules,
    *,
    levels: Mapping[str, Sequence[Any]] | None = None,
) -> ProtectedTable:
    """n, mean and sample variance per group from `n`, `sum`, `sum_sq` and, when given, `variance`.

    `variance` is the store's own sample variance (SQL `var_samp`, which DuckDB and PostgreSQL compute
    from running centred sums). Without it the variance comes from `sum_sq - sum**2 / n`, which cancels
    catastrophically when the mean is large beside the spread: 30 values 10**9 + {0, 1, 2} have variance
    0.69, but a double holds their sum of squares, 3e19, only to the nearest 4096. A missing `variance`
    (NaN) on a group of two or more also falls back to the sums.

    A group below the minimum (and its complement, when one group alone would be recoverable from the
    overall total) shows no number at all. Released groups keep `sum` and `sum_sq` beside n, mean and
    variance (a federation pools the latter three); rounding applies to `n` only. Output: group columns,
    n, mean, variance, sum, sum_sq, suppressed, suppression_reason.
    """
    grid = build_grid(df, group_cols, ["n", "sum", "sum_sq"], levels)
    n, status = _group_status(grid, "n", rules)
    sums = grid.arrays["sum"].reshape(-1)
    sums_sq = grid.arrays["sum_sq"].reshape(-1)
    stable = _store_variance(df, grid)
    out: dict[str, list[Any]] = {k: [] for k in ("n", "mean", "variance", "sum", "sum_sq")}
    for i, state in enumerate(status):
        if state != Status.RELEASED:
            for values in out.values():
                values.append(pd.NA)
            continue
        count, total, total_sq = int(n[i]), float(sums[i]), float(sums_sq[i])
        out["n"].append(rules.round(count))
        out["sum"].append(total)
        out["sum_sq"].append(total_sq)
        out["mean"].append(total / count if count else pd.NA)
        out["variance"].append(_variance(count, total, total_sq, stable[i]) if count > 1 else pd.NA)
    frame = _frame_start(grid)
    frame["n"] = pd.array(out["n"], dtype="Int64")
    for col in ("mean", "variance", "sum", "sum_sq"):
        frame[col] = pd.array(out[col], dtype="Float64")
    return _finish("summary", frame, status, rules, " whole (no mean, variance or sums)")


def _store_variance(df: pd.DataFrame, grid: Grid) -> np.ndarray:
    """The executor's `variance` per cell of `grid`, NaN where a group is absent, has none, or the frame
    carries no such column (a caller's own sufficient statistics)."""
    if "variance" not in df.columns:
        return np.full(grid.arrays["n"].size, np.nan)
    same_levels = dict(zip(grid.group_cols, grid.levels, strict=True))
    values = build_grid(df, grid.group_cols, ["variance"], same_levels, absent=np.nan, allow_missing=True)
    return values.arrays["variance"].reshape(-1)


def _variance(count: int, total: float, total_sq: float, stable: float) -> float:
    """Sample variance of a group of `count` >= 2: the store's when it gave one, else from the sums."""
    if not np.isnan(stable):
        return max(float(stable), 0.0)
    # Clamped at 0: sum_sq - sum^2/n can dip below zero by rounding error for near-constant groups.
    return max(total_sq - total * total / count, 0.0) / (count - 1)


def protect_quantiles(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    rules: DisclosureRules,
    *,
    value_cols: Sequence[str] | None = None,
    levels: Mapping[str, Sequence[Any]] | None = None,
    probs: Sequence[float] | None = None,
) -> ProtectedTable:
    """Quantiles per group, released only for groups of at least min_cell_count rows (`n` column).

    `value_cols` names the quantile columns (default: every column that is neither a group column nor n).
    With `probs` (one per value column), a quantile is also withheld when fewer than min_cell_count rows
    lie below or above it (n·p or n·(1−p) under the minimum): near the ends a quantile is in effect a few
    patients' own values. Output: group columns, n, the quantile columns (NA when suppressed or
    withheld), suppressed, suppression_reason.
    """
    if probs is not None and len(probs) != len(value_cols or []):
        raise InvalidAggregate("give one probability per quantile column")
    if value_cols is None:
        value_cols = [c for c in df.columns if c not in set(group_cols) and c != "n"]
    if "n" in value_cols or set(value_cols) & set(group_cols):
        raise InvalidAggregate("a quantile column cannot also be n or a group column")
    grid = build_grid(df, group_cols, ["n"], levels)
    n, status = _group_status(grid, "n", rules)
    quantiles = _quantile_columns(df, grid, value_cols)
    frame = _frame_start(grid)
    released = np.array([s == Status.RELEASED for s in status], dtype=bool)
    frame["n"] = pd.array(
        [rules.round(int(v)) if ok else pd.NA for v, ok in zip(n, released, strict=True)], dtype="Int64"
    )
    withheld = 0
    for i, col in enumerate(value_cols):
        values = quantiles[col]
        tail = min(probs[i], 1 - probs[i]) if probs is not None else 1.0
        near_end = np.asarray(n, dtype=float) * tail < rules.min_cell_count
        withheld += int((released & near_end).sum())
        frame[col] = pd.array(
            [
                v if ok and not end and not np.isnan(v) else pd.NA
                for v, ok, end in zip(values, released, near_end, strict=True)
            ],
            dtype="Float64",
        )
    table = _finish("quantiles", frame, status, rules, " whole (no quantiles)")
    if not withheld:
        return table
    note = (
        f"{withheld} quantile value(s) withheld: fewer than {rules.min_cell_count} rows lie beyond them, "
        "so they would describe a few patients' own values"
    )
    report = replace(table.report, reasons=(*table.report.reasons, note))
    return ProtectedTable(table.frame, report)


def _quantile_columns(df: pd.DataFrame, grid: Grid, value_cols: Sequence[str]) -> dict[str, np.ndarray]:
    """Quantile values on the same grid as n; NaN where a group is absent or its quantile is undefined."""
    same_levels = dict(zip(grid.group_cols, grid.levels, strict=True))
    values = build_grid(df, grid.group_cols, value_cols, same_levels, absent=np.nan, allow_missing=True)
    return {col: values.arrays[col].reshape(-1) for col in value_cols}
