"""Pooled summaries of values whose mean is large beside their spread: Chan's combination of the sites'
(n, mean, variance), not Σsum_sq − (Σsum)²/Σn, which cancels catastrophically there."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from gateway.federation.combine import InvalidSiteAnswer, SiteTable, combine
from pseudonymize.disclosure import DisclosureRules, protect_summary

RULES = DisclosureRules(min_cell_count=10)


def site_body(values: np.ndarray, rules: DisclosureRules = RULES) -> dict[str, Any]:
    """A site's released summary of `values`, its executor frame computed as the compiled SQL does."""
    con = duckdb.connect()
    con.register("p", pd.DataFrame({"x": values}))
    executed = con.execute(
        "SELECT count(x) AS n, sum(x) AS sum, sum(x * x) AS sum_sq, var_samp(x) AS variance FROM p"
    ).df()
    table = protect_summary(executed, [], rules)
    return {"kind": "summary", "columns": list(table.frame.columns), **table.to_dict()}


def pooled_row(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    tables = [SiteTable.from_body(f"S{i}", body, "summary", []) for i, body in enumerate(bodies)]
    (row,) = combine("summary", [], tables).rows
    return row


@pytest.mark.parametrize("base", [1e6, 1e8, 1e9, 1e12])
def test_large_means_pool_without_cancelling(base: float) -> None:
    offsets = [np.arange(n, dtype=np.float64) % 3 + shift for n, shift in ((30, 0.0), (41, 0.5), (25, 2.0))]
    row = pooled_row([site_body(base + part) for part in offsets])
    everything = np.concatenate(offsets)  # the spread, free of the base
    assert row["n"] == len(everything)
    assert row["mean"] == pytest.approx(base + everything.mean(), rel=1e-14)
    assert row["variance"] == pytest.approx(everything.var(ddof=1), rel=max(1e-14 * base, 1e-9))


def test_rows_without_moments_pool_from_their_sums() -> None:
    """An answer of n, sum and sum_sq only (the columns pooling requires) still pools, beside one with
    moments; each site's part is centred before the sites are combined."""
    rng = np.random.default_rng(7)
    first, second = rng.normal(50, 10, 120), rng.normal(60, 5, 80)
    bare = site_body(first)
    bare["columns"] = ["n", "sum", "sum_sq", "suppressed", "suppression_reason"]
    bare["rows"] = [{c: r[c] for c in bare["columns"]} for r in bare["rows"]]
    row = pooled_row([bare, site_body(second)])
    everything = np.concatenate([first, second])
    assert row["mean"] == pytest.approx(everything.mean(), rel=1e-12)
    assert row["variance"] == pytest.approx(everything.var(ddof=1), rel=1e-10)


def test_a_site_group_of_one_row_adds_no_spread_of_its_own() -> None:
    """Rounded up to n = 2, a group of one row shows no variance: it adds only its distance to the mean."""
    rounding = DisclosureRules(min_cell_count=1, round_to=2)
    lone, rest = np.array([13.0]), np.arange(20, dtype=np.float64)
    body = site_body(lone, rounding)
    assert body["rows"][0]["n"] == 2 and body["rows"][0]["variance"] is None
    row = pooled_row([body, site_body(rest)])
    parts = [(2.0, 13.0, 0.0), (20.0, rest.mean(), rest.var(ddof=1) * 19)]
    centre = sum(n * m for n, m, _ in parts) / 22
    expected = sum(m2 + n * (m - centre) ** 2 for n, m, m2 in parts) / 21
    assert row["variance"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variance": -1.0}, "variance is negative"),
        ({"variance": "wide"}, "variance is not a finite number"),
        ({"mean": True}, "mean is not a finite number"),
        ({"mean": 1e301}, "mean is not a finite number"),
        ({"suppressed": True, "n": None, "sum": None, "sum_sq": None}, "a suppressed row carries a value"),
    ],
)
def test_moments_breaking_the_answer_make_it_invalid(change: dict[str, Any], message: str) -> None:
    body = site_body(np.arange(30, dtype=np.float64))
    body["rows"] = [{**body["rows"][0], **change}]
    with pytest.raises(InvalidSiteAnswer, match=message):
        SiteTable.from_body("S", body, "summary", [])
