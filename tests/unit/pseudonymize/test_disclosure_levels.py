"""Rare group levels: merged into "(other)" before release, decided by the same rule on every path."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from pseudonymize.disclosure import DisclosureRules
from pseudonymize.disclosure.levels import OTHER, _missing, has_rare_level, recode_rare_levels


def rules(min_cell_count: int = 10) -> DisclosureRules:
    return DisclosureRules(min_cell_count=min_cell_count)


def test_frame_without_rare_levels_is_returned_unchanged() -> None:
    frame = pd.DataFrame(
        {"sex": ["F", "M", "F", "M"], "smoking": ["no", "no", "yes", "yes"], "n": [5, 6, 7, 8]}
    )
    # Each level totals at least 10 over the other column, though single cells are smaller.
    assert not has_rare_level(frame, ["sex", "smoking"], 10)
    assert recode_rare_levels(frame, ["sex", "smoking"], rules(), merge=True) is frame


def test_a_level_below_the_threshold_is_merged_into_other() -> None:
    frame = pd.DataFrame({"icd10": ["E11", "I10", "C50"], "n": [40, 30, 3]})
    assert has_rare_level(frame, ["icd10"], 10)
    recoded = recode_rare_levels(frame, ["icd10"], rules(), merge=True)
    assert "C50" not in set(recoded["icd10"])
    assert dict(zip(recoded["icd10"], recoded["n"], strict=True)) == {"E11": 40, "I10": 30, OTHER: 3}


def test_rare_levels_of_quantiles_are_dropped_not_merged() -> None:
    frame = pd.DataFrame({"icd10": ["E11", "C50"], "n": [40, 3], "q50": [7.1, 9.9]})
    recoded = recode_rare_levels(frame, ["icd10"], rules(), merge=False)
    assert list(recoded["icd10"]) == ["E11"]


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA])
def test_the_null_level_is_never_merged(missing: object) -> None:
    frame = pd.DataFrame({"smoking": pd.Series(["no", missing], dtype=object), "n": [40, 2]})
    assert not has_rare_level(frame, ["smoking"], 10)


def test_the_fast_check_agrees_with_pandas_on_random_frames() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        size = rng.randint(1, 15)
        frame = pd.DataFrame({
            "a": [rng.choice(["a0", "a1", "a2"]) for _ in range(size)],
            "b": [rng.choice(["b0", "b1", "b2", "b3", "b4"]) for _ in range(size)],
            "n": [rng.randint(0, 19) for _ in range(size)],
        })  # fmt: skip
        expected = any(bool((frame.groupby(col)["n"].sum() < 10).any()) for col in ("a", "b"))
        assert has_rare_level(frame, ["a", "b"], 10) == expected


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("string", ["a", None]),
        ("Int64", [1, None]),
        ("float64", [1.5, float("nan")]),
        ("boolean", [True, None]),
        ("datetime64[s]", [pd.Timestamp("2020-01-01"), None]),
        ("object", ["x", None, Decimal("NaN")]),
    ],
)
def test_missing_values_are_those_pandas_calls_missing(dtype: str, values: list[Any]) -> None:
    for value in pd.Series(values, dtype=dtype).tolist():
        assert _missing(value) == bool(pd.isna(value)), (dtype, value)
