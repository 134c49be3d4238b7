"""Histograms: counts per fixed bin, protected against the known total; attacks."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from pseudonymize.disclosure import REASON_BELOW_MIN, DisclosureRules, protect_histogram

RULES = DisclosureRules(min_cell_count=10)
BINS = [0, 10, 20, 30, 40, 50, 60]


def executor_histogram(values: np.ndarray) -> pd.DataFrame:
    """Fixed-width bins as the executor computes them; bins without rows are simply absent."""
    con = duckdb.connect()
    con.register("p", pd.DataFrame({"bmi": values}))
    return con.execute(
        'SELECT CAST(floor(bmi / 10) * 10 AS INTEGER) AS bin, count(*) AS "count" FROM p GROUP BY ALL'
    ).df()


def bmi() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.concatenate([rng.uniform(20, 30, 60), rng.uniform(30, 40, 35), [57.3]])


def test_every_bin_is_shown_and_released_bins_are_exact() -> None:
    table = protect_histogram(executor_histogram(bmi()), ["bin"], RULES, levels={"bin": BINS})
    rows = table.to_records()
    assert [r["bin"] for r in rows] == BINS
    assert all(r["margin"] is None for r in rows)  # a histogram prints no total row
    assert table.report.kind == "histogram"
    released = {r["bin"]: r["count"] for r in rows if not r["suppressed"]}
    assert released.get(20) in (None, 60) and released.get(30) in (None, 35)
    assert int(np.int64(len(bmi()))) == 96


def test_attack_an_outlier_alone_in_its_bin_stays_hidden() -> None:
    """One patient with BMI 57 sits alone in the 50-60 bin; the total is known (a plain count gives it)."""
    table = protect_histogram(executor_histogram(bmi()), ["bin"], RULES, levels={"bin": BINS})
    rows = {r["bin"]: r for r in table.to_records()}
    assert rows[50]["suppressed"] and rows[50]["suppression_reason"] == REASON_BELOW_MIN
    hidden = [b for b, r in rows.items() if r["suppressed"]]
    # Total minus the released bins must leave at least two hidden bins holding a value that can shift
    # between them: some hidden bin must be a released-size bin (a complement).
    released_sum = sum(r["count"] for r in rows.values() if not r["suppressed"])
    assert 96 - released_sum >= 10
    assert any(rows[b]["suppression_reason"] != REASON_BELOW_MIN for b in hidden)


def test_histogram_grouped_by_a_second_column_protects_both_directions() -> None:
    df = pd.DataFrame(
        [
            (b, s, c)
            for b, s, c in [
                (20, "F", 30),
                (20, "M", 31),
                (30, "F", 3),
                (30, "M", 40),
                (40, "F", 12),
                (40, "M", 11),
            ]
        ],
        columns=["bin", "sex", "count"],
    )
    rows = protect_histogram(df, ["bin", "sex"], RULES).to_records()
    for col in ("bin", "sex"):
        for level in {r[col] for r in rows}:
            assert sum(r["suppressed"] for r in rows if r[col] == level) != 1
