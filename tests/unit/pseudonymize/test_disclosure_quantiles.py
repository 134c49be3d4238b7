"""Quantiles per group: values only for groups passing the cell rule; attacks."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from pseudonymize.disclosure import (
    REASON_BELOW_MIN,
    DisclosureRules,
    InvalidAggregate,
    protect_quantiles,
)

RULES = DisclosureRules(min_cell_count=10)


def executor_quantiles(raw: pd.DataFrame) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("p", raw)
    return con.execute(
        "SELECT ward, count(los) AS n, quantile_cont(los, 0.25) AS p25, quantile_cont(los, 0.5) AS p50, "
        "quantile_cont(los, 0.75) AS p75 FROM p GROUP BY ward"
    ).df()


def stays() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = [("icu", float(v)) for v in rng.integers(1, 30, 30)]
    rows += [("surgery", float(v)) for v in rng.integers(1, 10, 45)]
    rows += [("burns", 61.0)]  # one patient with a very long stay
    rows += [("maternity", float(v)) for v in rng.integers(1, 5, 12)]
    return pd.DataFrame(rows, columns=["ward", "los"])


def test_released_groups_carry_the_executors_quantiles() -> None:
    raw = stays()
    table = protect_quantiles(executor_quantiles(raw), ["ward"], RULES)
    rows = {r["ward"]: r for r in table.to_records()}
    for ward in (w for w, r in rows.items() if not r["suppressed"]):
        values = raw.loc[raw.ward == ward, "los"]
        assert rows[ward]["n"] == len(values)
        assert rows[ward]["p50"] == pytest.approx(values.quantile(0.5))
        assert rows[ward]["p25"] == pytest.approx(values.quantile(0.25))
    assert list(table.frame.columns) == ["ward", "n", "p25", "p50", "p75", "suppressed", "suppression_reason"]
    assert table.report.kind == "quantiles"
    json.dumps(table.to_dict())


def test_value_columns_can_be_named_and_undefined_quantiles_are_none() -> None:
    df = pd.DataFrame({"g": ["a", "b"], "n": [20, 30], "median": [4.0, None], "extra": ["x", "y"]})
    rows = protect_quantiles(df, ["g"], RULES, value_cols=["median"]).to_records()
    assert [r["median"] for r in rows] == [4.0, None]
    assert "extra" not in rows[0]


def test_a_quantile_column_must_be_numeric_and_distinct() -> None:
    df = pd.DataFrame({"g": ["a", "b"], "n": [20, 30], "median": ["low", "high"]})
    with pytest.raises(InvalidAggregate, match="numeric"):
        protect_quantiles(df, ["g"], RULES)
    with pytest.raises(InvalidAggregate):
        protect_quantiles(df, ["g"], RULES, value_cols=["n"])


def test_rounding_applies_to_n_only() -> None:
    df = pd.DataFrame({"g": ["a", "b"], "n": [12, 23], "p50": [2.5, 3.5]})
    rows = protect_quantiles(df, ["g"], DisclosureRules(10, round_to=5)).to_records()
    assert [(r["n"], r["p50"]) for r in rows] == [(10, 2.5), (25, 3.5)]


# --- attacks -----------------------------------------------------------------------------------------


def test_attack_group_of_one_patient_reveals_no_quantile() -> None:
    """Every quantile of a group of one is that patient's value: the group is suppressed whole."""
    table = protect_quantiles(executor_quantiles(stays()), ["ward"], RULES)
    burns = next(r for r in table.to_records() if r["ward"] == "burns")
    assert burns["suppressed"] and burns["suppression_reason"] == REASON_BELOW_MIN
    assert (burns["n"], burns["p25"], burns["p50"], burns["p75"]) == (None, None, None, None)
    assert 61.0 not in [v for r in table.to_records() for v in (r["p25"], r["p50"], r["p75"])]


def test_attack_group_size_recovered_from_the_total() -> None:
    """n is released per group; with one group hidden, total n minus the rest would be its size."""
    rows = protect_quantiles(executor_quantiles(stays()), ["ward"], RULES).to_records()
    assert sum(r["suppressed"] for r in rows) >= 2
