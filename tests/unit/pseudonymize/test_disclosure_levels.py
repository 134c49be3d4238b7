"""Rare group levels: merged into "(other)" before release (quantiles too, their values withheld), decided by
the same rule on every path."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from pseudonymize.disclosure import DisclosureRules, protect_quantiles
from pseudonymize.disclosure.levels import (
    OTHER,
    _missing,
    has_rare_level,
    recode_rare_levels,
    withhold_merged_quantiles,
)


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


def test_rare_levels_of_quantiles_are_merged_with_their_quantiles_withheld() -> None:
    """Dropped, the rare groups would be the ungrouped n minus the groups' (one patient here): merged, their
    size lies in "(other)" as in a count, and their quantiles, which do not combine, are NaN."""
    frame = pd.DataFrame({"icd10": ["E11", "C50", "D50"], "n": [40, 1, 3], "q50": [7.1, 9.9, 8.8]})
    recoded = recode_rare_levels(frame, ["icd10"], rules(), merge=False)
    assert list(recoded.columns) == ["icd10", "n", "q50"]
    rows = {icd10: (n, q50) for icd10, n, q50 in recoded.itertuples(index=False, name=None)}
    assert rows.keys() == {"E11", OTHER} and rows["E11"] == (40, 7.1)
    assert rows[OTHER][0] == 4 and math.isnan(rows[OTHER][1])
    assert recoded["n"].sum() == frame["n"].sum()


def test_quantile_groups_of_two_columns_merge_as_counts_do() -> None:
    frame = pd.DataFrame({
        "country": ["DE", "DE", "DE", "LU"],
        "outcome": ["died", "readmitted", "recovered", "recovered"],
        "n": [455, 294, 1885, 1],
        "q50": [27.0, 26.0, 25.0, 41.3],
    })  # fmt: skip
    quantiles = recode_rare_levels(frame, ["country", "outcome"], rules(), merge=False)
    counts = recode_rare_levels(frame.drop(columns="q50"), ["country", "outcome"], rules(), merge=True)
    key = ["country", "outcome"]
    assert quantiles[[*key, "n"]].sort_values(key).values.tolist() == counts.sort_values(key).values.tolist()
    other = quantiles[quantiles["country"] == OTHER]
    assert other["outcome"].tolist() == ["recovered"] and other["q50"].isna().all()
    assert quantiles.loc[quantiles["country"] == "DE", "q50"].tolist() == [27.0, 26.0, 25.0]


def test_a_level_named_other_loses_its_quantiles_once_rare_levels_join_it() -> None:
    """Merged with the rare levels, a level truly called "(other)" no longer stands for its own rows."""
    frame = pd.DataFrame({"icd10": ["E11", OTHER, "C50"], "n": [40, 30, 2], "q50": [7.1, 6.5, 9.9]})
    recoded = recode_rare_levels(frame, ["icd10"], rules(), merge=False)
    rows = {icd10: (n, q50) for icd10, n, q50 in recoded.itertuples(index=False, name=None)}
    assert rows["E11"] == (40, 7.1) and rows[OTHER][0] == 32 and math.isnan(rows[OTHER][1])


def test_merged_quantiles_are_withheld_from_the_protected_table_with_a_reason() -> None:
    frame = pd.DataFrame(
        {"icd10": ["E11", "I10", "C50", "D50"], "n": [40, 30, 6, 5], "q50": [7.1, 6.0, 9.9, 9.0]}
    )
    recoded = recode_rare_levels(frame, ["icd10"], rules(), merge=False)
    # The table as protect_quantiles would return it had a quantile of "(other)" slipped through.
    recoded["q50"] = recoded["q50"].fillna(9.5)
    table = withhold_merged_quantiles(
        protect_quantiles(recoded, ["icd10"], rules()), ["icd10"], ["q50"], rules()
    )
    rows = {r["icd10"]: r for r in table.to_records()}
    assert (rows[OTHER]["n"], rows[OTHER]["q50"], rows[OTHER]["suppressed"]) == (11, None, False)
    assert rows["E11"]["q50"] == 7.1 and rows["I10"]["q50"] == 6.0
    assert table.report.reasons[-1] == (
        "quantiles of 1 (other) group(s) withheld: they merge levels held by fewer than 10 rows each, "
        "whose quantiles do not combine"
    )
    # A suppressed "(other)" group is explained by its suppression: no second reason.
    small = recode_rare_levels(frame.assign(n=[40, 30, 2, 1]), ["icd10"], rules(), merge=False)
    protected = protect_quantiles(small, ["icd10"], rules())
    assert withhold_merged_quantiles(protected, ["icd10"], ["q50"], rules()).report == protected.report
    plain = protect_quantiles(frame.iloc[:2], ["icd10"], rules())
    assert withhold_merged_quantiles(plain, ["icd10"], ["q50"], rules()) is plain


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
