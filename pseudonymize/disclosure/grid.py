"""The complete grid of a grouped aggregate: every combination of observed levels, absent ones as zero."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pseudonymize.disclosure.errors import InvalidAggregate


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
    group_cols = tuple(group_cols)
    if len(set(group_cols)) != len(group_cols):
        raise InvalidAggregate("a group-by column is named twice")
    missing = [c for c in (*group_cols, *value_cols) if c not in df.columns]
    if missing:
        raise InvalidAggregate(f"the aggregate lacks the column(s) {', '.join(map(repr, missing))}")
    known_levels = known_levels or {}
    levels: list[list[Any]] = []
    codes: list[np.ndarray] = []
    for col in group_cols:
        column = [_native(v) for v in df[col].tolist()]
        known = known_levels.get(col)
        try:
            observed = list(dict.fromkeys(column))
            lv = _ordered_levels(observed, [_native(v) for v in known] if known is not None else None)
            position = {v: i for i, v in enumerate(lv)}
            codes.append(np.array([position[v] for v in column], dtype=np.int64))
        except TypeError as exc:  # unhashable group values (lists, dicts) are no group labels
            raise InvalidAggregate(f"group column {col!r} holds values that cannot label a group") from exc
        levels.append(lv)
    shape = tuple(len(lv) for lv in levels)
    if group_cols:
        flat = np.ravel_multi_index(tuple(codes), shape) if len(df) else np.zeros(0, dtype=np.int64)
        if len(np.unique(flat)) != len(flat):
            raise InvalidAggregate("the aggregate holds the same group twice")
    else:
        if len(df) != 1:
            raise InvalidAggregate("an aggregate without group-by must have exactly one row")
        flat = np.zeros(1, dtype=np.int64)
    size = int(np.prod(shape)) if shape else 1
    arrays: dict[str, np.ndarray] = {}
    for col in value_cols:
        series = df[col]
        if series.isna().any() and not allow_missing:
            raise InvalidAggregate(f"column {col!r} holds a missing value")
        try:
            numbers = pd.to_numeric(series).astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise InvalidAggregate(f"column {col!r} must be numeric") from exc
        values = np.full(size, absent, dtype=np.float64)
        values[flat] = numbers
        arrays[col] = values.reshape(shape) if shape else values
    return Grid(group_cols, tuple(tuple(lv) for lv in levels), arrays)


def integer_counts(values: np.ndarray, column: str) -> np.ndarray:
    """Counts as int64, refusing negatives and fractions (a bug upstream, never silently rounded)."""
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values != np.floor(values)):
        raise InvalidAggregate(f"column {column!r} must hold non-negative whole counts")
    return values.astype(np.int64)
