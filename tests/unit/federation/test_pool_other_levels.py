"""Pooling answers whose sites merged different rare levels into "(other)": a pooled level is only ever
the sum of that level's own rows, and "(other)" holds everything else, for every kind that groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gateway.federation.combine import REASON_AT_SITE, SiteTable, combine, merged_levels
from pseudonymize.disclosure import DisclosureRules, protect_counts, protect_histogram, protect_summary
from pseudonymize.disclosure.levels import OTHER, recode_rare_levels

RULES = DisclosureRules(min_cell_count=10)
SMALL_RULES = DisclosureRules(min_cell_count=5)

# Site A: a-levels r, t, v and w are rare (fewer than 10 rows each) and merged; its b-level s is common.
CELLS_A = {
    ("x", "p"): 40, ("x", "q"): 50, ("x", "s"): 20,
    ("y", "p"): 60, ("y", "q"): 70, ("y", "s"): 20,
    ("r", "p"): 9, ("t", "q"): 9, ("v", "s"): 9, ("w", "p"): 1, ("w", "q"): 1, ("w", "s"): 1,
}  # fmt: skip
# Site B: a-level r is common, b-levels s, u, z and k are rare and merged.
CELLS_B = {
    ("x", "p"): 11, ("x", "q"): 22, ("y", "p"): 33, ("y", "q"): 44, ("r", "p"): 15, ("r", "q"): 15,
    ("x", "s"): 9, ("y", "u"): 9, ("r", "z"): 9, ("x", "k"): 1, ("y", "k"): 1, ("r", "k"): 1,
}  # fmt: skip


def _counts(site: str, kind: str, cells: Mapping[tuple[Any, ...], int], groups: list[str]) -> SiteTable:
    frame = pd.DataFrame([{**dict(zip(groups, key, strict=True)), "n": n} for key, n in cells.items()])
    frame = recode_rare_levels(frame, groups, RULES, merge=True)
    table = protect_counts(frame, groups, RULES, margins=True, count_col="n")
    body = {"kind": kind, "columns": list(table.frame.columns), **table.to_dict()}
    return SiteTable.from_body(site, body, kind, groups)


def _pooled_truth(
    sites: list[Mapping[tuple[Any, ...], int]], fold: Mapping[int, set[str]]
) -> dict[tuple[Any, ...], int]:
    """The true pooled count of every cell, with the levels `fold` names (by position) taken as "(other)"."""
    truth: dict[tuple[Any, ...], int] = {}
    for cells in sites:
        for key, n in cells.items():
            folded = tuple(OTHER if v in fold.get(i, set()) else v for i, v in enumerate(key))
            truth[folded] = truth.get(folded, 0) + n
    return truth


def test_a_crosstab_pools_each_level_from_its_own_rows_and_everything_else_as_other() -> None:
    tables = [_counts("A", "crosstab", CELLS_A, ["a", "b"]), _counts("B", "crosstab", CELLS_B, ["a", "b"])]
    # A merged r (which B shows) into its "(other)"; B merged s (which A shows) into its own.
    assert merged_levels(["a", "b"], tables) == {"a": frozenset({"r"}), "b": frozenset({"s"})}
    pooled = combine("crosstab", ["a", "b"], tables)
    truth = _pooled_truth([CELLS_A, CELLS_B], {0: {"r", "t", "v", "w"}, 1: {"s", "u", "z", "k"}})
    rows = {(r["a"], r["b"], r["margin"]): r for r in pooled.rows}
    assert not any(r["suppressed"] for r in pooled.rows)
    assert {k[0] for k in rows if k[2] is None} == {"x", "y", OTHER}
    assert {k[1] for k in rows if k[2] is None} == {"p", "q", OTHER}
    for (a, b), n in truth.items():
        assert rows[(a, b, None)]["count"] == n, (a, b)
    for level in ("x", "y", OTHER):
        assert rows[(level, None, "row")]["count"] == sum(n for (a, _), n in truth.items() if a == level)
    for level in ("p", "q", OTHER):
        assert rows[(None, level, "column")]["count"] == sum(n for (_, b), n in truth.items() if b == level)
    assert rows[(None, None, "total")]["count"] == sum(CELLS_A.values()) + sum(CELLS_B.values())
    assert any("pooled into (other)" in reason for reason in pooled.reasons)


def test_a_count_by_one_column_pools_other_alike() -> None:
    a = {("x",): 110, ("y",): 150, ("r",): 9, ("t",): 8}
    b = {("x",): 44, ("y",): 77, ("r",): 30}
    pooled = combine("count", ["a"], [_counts("A", "count", a, ["a"]), _counts("B", "count", b, ["a"])])
    rows = {(r["a"], r["margin"]): r["count"] for r in pooled.rows}
    assert rows == {("x", None): 154, ("y", None): 227, (OTHER, None): 9 + 8 + 30, (None, "total"): 428}


def test_a_summary_describes_each_pooled_group_exactly() -> None:
    a = {"L": [100.0, 101, 102], "M": [1.0, 2, 3, 4, 5, 6], "R": [50.0, 51, 52]}
    b = {"L": [100.0] * 6 + [104.0] * 4, "M": [1.5, 2, 3, 4, 5, 7]}

    def site(name: str, groups: dict[str, list[float]]) -> SiteTable:
        rows = [
            {"g": g, "n": len(v), "sum": float(np.sum(v)), "sum_sq": float(np.sum(np.square(v))),
             "variance": float(np.var(v, ddof=1))}
            for g, v in groups.items()
        ]  # fmt: skip
        frame = recode_rare_levels(pd.DataFrame(rows), ["g"], SMALL_RULES, merge=True)
        table = protect_summary(frame, ["g"], SMALL_RULES)
        body = {"kind": "summary", "columns": list(table.frame.columns), **table.to_dict()}
        return SiteTable.from_body(name, body, "summary", ["g"])

    pooled = {r["g"]: r for r in combine("summary", ["g"], [site("A", a), site("B", b)]).rows}
    truth = {"M": a["M"] + b["M"], OTHER: a["L"] + a["R"] + b["L"]}
    assert set(pooled) == set(truth)
    for group, values in truth.items():
        row = pooled[group]
        assert not row["suppressed"]
        assert row["n"] == len(values)
        assert row["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert row["variance"] == pytest.approx(np.var(values, ddof=1), rel=1e-9)


def test_a_histogram_pools_each_group_s_bins_from_its_own_rows() -> None:
    # A merges L, R and S (4, 4 and 2 values); B shows L.
    a = {
        ("L", 0): 2, ("L", 1): 2, ("R", 0): 2, ("R", 1): 2, ("S", 0): 1, ("S", 1): 1, ("M", 0): 5, ("M", 1): 6
    }  # fmt: skip
    b = {("L", 0): 7, ("L", 1): 8, ("M", 0): 5, ("M", 1): 5}

    def site(name: str, cells: dict[tuple[str, int], int]) -> SiteTable:
        frame = pd.DataFrame([{"g": g, "bin": k, "n": n} for (g, k), n in cells.items()])
        frame = recode_rare_levels(frame, ["g"], SMALL_RULES, merge=True)
        table = protect_histogram(frame, ["g", "bin"], SMALL_RULES, count_col="n", levels={"bin": [0, 1]})
        body = {"kind": "histogram", "columns": list(table.frame.columns), **table.to_dict()}
        return SiteTable.from_body(name, body, "histogram", ["g"])

    pooled = combine("histogram", ["g"], [site("A", a), site("B", b)])
    rows = {(r["g"], r["bin"]): r["count"] for r in pooled.rows}
    assert not any(r["suppressed"] for r in pooled.rows)
    assert rows == _pooled_truth([a, b], {0: {"L", "R", "S"}})


def _body(kind: str, counts: dict[Any, int | None], minimum: int = 5) -> dict[str, Any]:
    """A count by `g`, a count of None being a row the site hid."""
    rows = [
        {"g": g, "count": n, "suppressed": n is None, "margin": None,
         "suppression_reason": "complementary" if n is None else None}
        for g, n in counts.items()
    ]  # fmt: skip
    return {"kind": kind, "columns": ["g", "count", "suppressed", "suppression_reason", "margin"],
            "rows": rows, "disclosure": {"min_cell_count": minimum, "round_to": 1}}  # fmt: skip


def test_a_hidden_row_folded_into_other_hides_the_pooled_other() -> None:
    a = _body("count", {"M": 20, OTHER: 12})
    b = _body("count", {"M": 30, "L": None, "N": None})
    tables = [SiteTable.from_body(s, body, "count", ["g"]) for s, body in (("A", a), ("B", b))]
    rows = {r["g"]: r for r in combine("count", ["g"], tables).rows}
    assert set(rows) == {"M", OTHER}
    assert rows["M"]["count"] == 50
    assert rows[OTHER]["suppressed"] and rows[OTHER]["suppression_reason"] == REASON_AT_SITE


def test_levels_are_kept_when_no_site_merged_or_every_merging_site_shows_them() -> None:
    a = _body("count", {"M": 20, "L": 10, OTHER: 12, None: 7})
    b = _body("count", {"M": 30, "L": 8})
    tables = [SiteTable.from_body(s, body, "count", ["g"]) for s, body in (("A", a), ("B", b))]
    assert merged_levels(["g"], tables) == {}
    rows = {r["g"]: r["count"] for r in combine("count", ["g"], tables).rows}
    assert rows == {"M": 50, "L": 18, OTHER: 12, None: 7}


def test_a_pooled_other_below_the_federation_minimum_is_hidden() -> None:
    # A's rules release a 6 (min 5); B's min is 10: the pooled "(other)" of 6 + 0 is below it.
    a = _body("count", {"M": 20, OTHER: 6})
    b = _body("count", {"M": 30, "L": 0}, minimum=10)
    tables = [SiteTable.from_body(s, body, "count", ["g"]) for s, body in (("A", a), ("B", b))]
    rows = {r["g"]: r for r in combine("count", ["g"], tables).rows}
    assert set(rows) == {"M", OTHER}
    assert rows[OTHER]["suppressed"] and rows[OTHER]["count"] is None
