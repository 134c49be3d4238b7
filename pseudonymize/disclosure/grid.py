"""The complete grid of a grouped aggregate: every combination of observed levels, absent ones as zero."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pseudonymize.disclosure.errors import InvalidAggregate, TableTooLarge

MAX_GRID_CELLS = 100_000
"""The most cells (the levels of the group columns times the bins) a table may have at all: the grid is
laid out whole in memory, and four group columns of a few hundred values each would make billions."""


@dataclass(frozen=True)
class Grid:
    """Levels per group column and, per aggregate column, an array shaped by them (C order)."""

    group_cols: tuple[str, ...]
    levels: tuple[tuple[Any, ...], ...]
    arrays: Mapping[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(lv) for lv in self.levels)

    def cell_labels(self) -> list[tuple[Any, ...]]:
        """The group values of every cell, in the arrays' flat order."""
        # itertools.product walks the levels in C order, like the arrays, far cheaper than a MultiIndex.
        return list(itertools.product(*self.levels))


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _ordered_levels(observed: Sequence[Any], known: Sequence[Any] | None) -> list[Any]:
    """Known levels in their given order then any extra observed; else observed sorted, a null level last."""
    present = [v for v in observed if not _is_null(v)]
    has_null = len(present) < len(observed)
    if known is not None:
        levels = list(dict.fromkeys(known))
        listed = set(levels)
        levels += [v for v in present if v not in listed]
    else:
        try:
            levels = sorted(present)
        except TypeError:  # mixed types have no order; the executor's order is the next best thing
            levels = present
    if has_null and not any(_is_null(v) for v in levels):
        levels.append(None)
    return levels


def _native(value: Any) -> Any:
    """numpy scalars become Python values and nulls become None, so levels compare and serialize plainly."""
    if _is_null(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def build_grid(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    value_cols: Sequence[str],
    known_levels: Mapping[str, Sequence[Any]] | None = None,
    *,
    absent: float = 0.0,
    allow_missing: bool = False,
) -> Grid:
    """Lay the executor's rows on the full grid of levels; an absent combination gets `absent` (zero)."""
    group_cols = _unique(group_cols)
    missing = [c for c in (*group_cols, *value_cols) if c not in df.columns]
    if missing:
        raise InvalidAggregate(f"the aggregate lacks the column(s) {', '.join(map(repr, missing))}")
    levels, flat = _cells(group_cols, [df[col].tolist() for col in group_cols], len(df), known_levels)
    arrays: dict[str, np.ndarray] = {}
    for col in value_cols:
        series = df[col]
        if series.isna().any() and not allow_missing:
            raise InvalidAggregate(f"column {col!r} holds a missing value")
        try:
            numbers = pd.to_numeric(series).astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise InvalidAggregate(f"column {col!r} must be numeric") from exc
        arrays[col] = _spread(numbers, flat, levels, absent)
    return Grid(group_cols, tuple(tuple(lv) for lv in levels), arrays)


def build_grid_from_columns(
    columns: Mapping[str, Sequence[Any]],
    group_cols: Sequence[str],
    value_cols: Sequence[str],
    known_levels: Mapping[str, Sequence[Any]] | None = None,
    *,
    absent: float = 0.0,
) -> Grid:
    """`build_grid` over equally long Python columns, for answers too small to pay for a DataFrame.

    Group values are Python scalars or None; value columns hold Python numbers, none missing.
    """
    group_cols = _unique(group_cols)
    missing = [c for c in (*group_cols, *value_cols) if c not in columns]
    if missing:
        raise InvalidAggregate(f"the aggregate lacks the column(s) {', '.join(map(repr, missing))}")
    lengths = {len(columns[c]) for c in (*group_cols, *value_cols)}
    if len(lengths) > 1:
        raise InvalidAggregate("the aggregate's columns differ in length")
    n_rows = lengths.pop() if lengths else 0
    levels, flat = _cells(group_cols, [list(columns[c]) for c in group_cols], n_rows, known_levels)
    arrays: dict[str, np.ndarray] = {}
    for col in value_cols:
        values = columns[col]
        if any(_is_null(v) for v in values):
            raise InvalidAggregate(f"column {col!r} holds a missing value")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise InvalidAggregate(f"column {col!r} must be numeric")
        arrays[col] = _spread(np.array(values, dtype=np.float64), flat, levels, absent)
    return Grid(group_cols, tuple(tuple(lv) for lv in levels), arrays)


def _unique(group_cols: Sequence[str]) -> tuple[str, ...]:
    if len(set(group_cols)) != len(group_cols):
        raise InvalidAggregate("a group-by column is named twice")
    return tuple(group_cols)


def _cells(
    group_cols: tuple[str, ...],
    group_values: list[list[Any]],
    n_rows: int,
    known_levels: Mapping[str, Sequence[Any]] | None,
) -> tuple[list[list[Any]], np.ndarray]:
    """The levels of each group column and the flat grid position of every row."""
    known_levels = known_levels or {}
    levels: list[list[Any]] = []
    cells = 1
    # Flat C-order positions built in Python: numpy's per-call overhead dominates grids this small.
    flat = [0] * n_rows
    for col, values in zip(group_cols, group_values, strict=True):
        column = [_native(v) for v in values]
        known = known_levels.get(col)
        try:
            observed = list(dict.fromkeys(column))
            lv = _ordered_levels(observed, [_native(v) for v in known] if known is not None else None)
            position = {v: i for i, v in enumerate(lv)}
            flat = [f * len(lv) + position[v] for f, v in zip(flat, column, strict=True)]
        except TypeError as exc:  # unhashable group values (lists, dicts) are no group labels
            raise InvalidAggregate(f"group column {col!r} holds values that cannot label a group") from exc
        cells *= len(lv)
        if cells > MAX_GRID_CELLS:
            raise TableTooLarge(MAX_GRID_CELLS, to_hide=False)
        levels.append(lv)
    if group_cols:
        if len(set(flat)) != len(flat):
            raise InvalidAggregate("the aggregate holds the same group twice")
    elif n_rows != 1:
        raise InvalidAggregate("an aggregate without group-by must have exactly one row")
    return levels, np.array(flat, dtype=np.int64)


def _spread(numbers: np.ndarray, flat: np.ndarray, levels: list[list[Any]], absent: float) -> np.ndarray:
    """One value column laid on the grid, `absent` where no row fills a cell."""
    shape = tuple(len(lv) for lv in levels)
    values = np.full(math.prod(shape), absent, dtype=np.float64)
    values[flat] = numbers
    return values.reshape(shape) if shape else values


def integer_counts(values: np.ndarray, column: str) -> np.ndarray:
    """Counts as int64, refusing negatives and fractions (a bug upstream, never silently rounded)."""
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values != np.floor(values)):
        raise InvalidAggregate(f"column {column!r} must hold non-negative whole counts")
    return values.astype(np.int64)
