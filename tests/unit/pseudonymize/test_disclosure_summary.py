"""Summary statistics per group: only groups passing the cell rule show n, mean, variance, sums; attacks."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from pseudonymize.disclosure import (
    REASON_BELOW_MIN,
    REASON_COMPLEMENTARY,
    DisclosureRules,
    InvalidAggregate,
    QuerySetTooSmall,
    protect_summary,
)

RULES = DisclosureRules(min_cell_count=10)


def patients(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = {"north": 40, "south": 25, "east": 14, "west": 1}
    rows = [(site, float(v)) for site, n in sizes.items() for v in rng.normal(7.0, 1.5, n).round(2)]
    return pd.DataFrame(rows, columns=["site", "hba1c"])


def executor_summary(df: pd.DataFrame, group_cols: list[str]) -> pd.DataFrame:
    """What the query executor hands over: n, sum, sum of squares per group (computed by DuckDB)."""
    con = duckdb.connect()
    con.register("p", df)
    cols = ", ".join(group_cols)
    return con.execute(
        f"SELECT {cols}, count(hba1c) AS n, sum(hba1c) AS sum, sum(hba1c * hba1c) AS sum_sq "
        f"FROM p GROUP BY {cols}"
    ).df()


def test_released_groups_match_a_reference_mean_and_sample_variance() -> None:
    raw = patients()
    table = protect_summary(executor_summary(raw, ["site"]), ["site"], RULES)
    rows = {r["site"]: r for r in table.to_records()}
    # west (1 patient) is hidden for size and east, the smallest other group, as its complement.
    assert [s for s, r in rows.items() if not r["suppressed"]] == ["north", "south"]
    for site in ("north", "south"):
        values = raw.loc[raw.site == site, "hba1c"].to_numpy()
        assert rows[site]["n"] == len(values)
        assert rows[site]["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert rows[site]["variance"] == pytest.approx(values.var(ddof=1), rel=1e-9)
        assert rows[site]["sum"] == pytest.approx(values.sum(), rel=1e-12)
        assert rows[site]["sum_sq"] == pytest.approx((values**2).sum(), rel=1e-12)
    assert list(table.frame.columns) == [
        "site",
        "n",
        "mean",
        "variance",
        "sum",
        "sum_sq",
        "suppressed",
        "suppression_reason",
    ]
    json.dumps(table.to_dict())


def test_sufficient_statistics_pool_exactly_across_sites() -> None:
    """A federation adds n, sum, sum_sq of released groups and gets the pooled mean and variance."""
    raw = patients()
    parts = [raw.iloc[:40], raw.iloc[40:]]
    big = pd.concat([p.assign(site="all") for p in parts])
    pooled = {"n": 0, "sum": 0.0, "sum_sq": 0.0}
    for part in parts:
        row = protect_summary(
            executor_summary(part.assign(site="all"), ["site"]), ["site"], RULES
        ).to_records()[0]
        for k in pooled:
            pooled[k] += row[k]
    mean = pooled["sum"] / pooled["n"]
    variance = (pooled["sum_sq"] - pooled["n"] * mean**2) / (pooled["n"] - 1)
    assert mean == pytest.approx(big.hba1c.mean(), rel=1e-12)
    assert variance == pytest.approx(big.hba1c.var(ddof=1), rel=1e-9)


def test_rounding_applies_to_n_only() -> None:
    df = pd.DataFrame({"g": ["a", "b"], "n": [12, 23], "sum": [24.0, 69.0], "sum_sq": [60.0, 230.0]})
    rows = protect_summary(df, ["g"], DisclosureRules(10, round_to=5)).to_records()
    assert [r["n"] for r in rows] == [10, 25]
    assert [r["mean"] for r in rows] == [2.0, 3.0]
    assert [r["sum"] for r in rows] == [24.0, 69.0]


def test_no_group_by_is_one_summary() -> None:
    df = pd.DataFrame({"n": [11], "sum": [22.0], "sum_sq": [46.0]})
    rows = protect_summary(df, [], RULES).to_records()
    assert rows == [
        {
            "n": 11,
            "mean": 2.0,
            "variance": pytest.approx(0.2),
            "sum": 22.0,
            "sum_sq": 46.0,
            "suppressed": False,
            "suppression_reason": None,
        }
    ]


def test_malformed_summary_input_is_refused() -> None:
    with pytest.raises(InvalidAggregate, match="sum_sq"):
        protect_summary(pd.DataFrame({"g": ["a"], "n": [20], "sum": [3.0]}), ["g"], RULES)


def test_a_summary_over_too_few_rows_is_refused_whole() -> None:
    df = pd.DataFrame({"g": ["a", "b"], "n": [4, 3], "sum": [4.0, 3.0], "sum_sq": [4.0, 3.0]})
    with pytest.raises(QuerySetTooSmall):
        protect_summary(df, ["g"], RULES)


# --- attacks -----------------------------------------------------------------------------------------


def test_attack_group_of_one_patient_reveals_no_mean() -> None:
    """The mean of a group of one is that patient's value: the group is suppressed whole."""
    raw = patients()
    table = protect_summary(executor_summary(raw, ["site"]), ["site"], RULES)
    west = next(r for r in table.to_records() if r["site"] == "west")
    assert west["suppressed"] and west["suppression_reason"] == REASON_BELOW_MIN
    assert all(west[k] is None for k in ("n", "mean", "variance", "sum", "sum_sq"))
    lone_value = float(raw.loc[raw.site == "west", "hba1c"].iloc[0])
    for row in table.to_records():
        assert lone_value not in [row["mean"], row["sum"]]


def test_attack_total_sum_minus_released_groups_gives_the_hidden_sum() -> None:
    """The overall sum is one query away; with one group hidden, total minus the rest would be its sum."""
    raw = patients()
    summary = executor_summary(raw, ["site"])
    rows = protect_summary(summary, ["site"], RULES).to_records()
    hidden = [r for r in rows if r["suppressed"]]
    assert len(hidden) >= 2
    assert {r["suppression_reason"] for r in hidden} == {REASON_BELOW_MIN, REASON_COMPLEMENTARY}
    overall = raw.hba1c.sum()
    released = sum(r["sum"] for r in rows if not r["suppressed"])
    lone_value = float(raw.loc[raw.site == "west", "hba1c"].iloc[0])
    assert overall - released != pytest.approx(lone_value)


def test_attack_cross_classified_summary_hides_the_lone_patient() -> None:
    raw = patients().assign(sex=lambda d: np.where(np.arange(len(d)) % 2 == 0, "F", "M"))
    table = protect_summary(executor_summary(raw, ["site", "sex"]), ["site", "sex"], RULES)
    rows = table.to_records()
    for r in rows:
        if r["site"] == "west":
            assert r["suppressed"] and r["mean"] is None
    # Each site's and each sex's groups (lines of the table) hold 0 or at least 2 hidden groups.
    for col in ("site", "sex"):
        for level in {r[col] for r in rows}:
            assert sum(r["suppressed"] for r in rows if r[col] == level) != 1
