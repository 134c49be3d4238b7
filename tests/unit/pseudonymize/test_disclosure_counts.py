"""Counts and cross-tabulations: grid completion, small cells, complements, margins, rounding; attacks."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from pseudonymize.disclosure import (
    REASON_BELOW_MIN,
    REASON_COMPLEMENTARY,
    DisclosureRules,
    InvalidAggregate,
    ProtectedTable,
    QuerySetTooSmall,
    UnprotectableTable,
    protect_counts,
)

RULES = DisclosureRules(min_cell_count=10)


def frame(rows: list[tuple[Any, ...]], cols: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*cols, "count"])


def cell(table: ProtectedTable, **where: Any) -> dict[str, Any]:
    """The one printed row matching the given group values (None for a margin's summed-over column)."""
    matches = [r for r in table.to_records() if all(r[k] == v for k, v in where.items())]
    assert len(matches) == 1, matches
    return matches[0]


def test_large_cells_pass_unchanged_with_margins_marked() -> None:
    table = protect_counts(
        frame([("F", "<40", 25), ("F", "40+", 30), ("M", "<40", 40), ("M", "40+", 35)], ["sex", "age"]),
        ["sex", "age"],
        RULES,
        margins=True,
    )
    rows = table.to_records()
    assert [(r["sex"], r["age"], r["count"], r["margin"]) for r in rows] == [
        ("F", "40+", 30, None),
        ("F", "<40", 25, None),
        ("M", "40+", 35, None),
        ("M", "<40", 40, None),
        ("F", None, 55, "row"),
        ("M", None, 75, "row"),
        (None, "40+", 65, "column"),
        (None, "<40", 65, "column"),
        (None, None, 130, "total"),
    ]
    assert not any(r["suppressed"] for r in rows)
    assert table.report.suppressed == 0
    assert table.report.reasons == ("no cell below the minimum of 10; nothing suppressed for size",)
    assert list(table.frame.columns) == ["sex", "age", "count", "suppressed", "suppression_reason", "margin"]


def test_columns_are_stable_without_margins_and_without_group_by() -> None:
    one = protect_counts(frame([("a", 12), ("b", 30)], ["g"]), ["g"], RULES, margins=False)
    assert list(one.frame.columns) == ["g", "count", "suppressed", "suppression_reason", "margin"]
    assert one.report.margins == 0
    total = protect_counts(pd.DataFrame({"count": [42]}), [], RULES, margins=True)
    assert total.to_records() == [
        {"count": 42, "suppressed": False, "suppression_reason": None, "margin": None}
    ]


def test_absent_combinations_become_explicit_zero_cells_and_are_hidden() -> None:
    table = protect_counts(
        frame([("F", "<40", 25), ("F", "40+", 30), ("M", "<40", 40)], ["sex", "age"]),
        ["sex", "age"],
        RULES,
        margins=False,
    )
    zero = cell(table, sex="M", age="40+")
    assert zero["suppressed"] and zero["count"] is None
    assert zero["suppression_reason"] == REASON_BELOW_MIN  # never "zero": that would reveal the value
    assert table.report.cells == 4


def test_zero_cells_show_as_zero_where_the_agreement_allows() -> None:
    table = protect_counts(
        frame([("a", 0), ("b", 30), ("c", 40)], ["g"]),
        ["g"],
        DisclosureRules(10, keep_zero_cells=True),
        margins=True,
    )
    assert cell(table, g="a")["count"] == 0
    assert table.report.suppressed == 0
    assert "zero counts are shown as zero, as the agreement allows" in table.report.reasons


def test_known_levels_complete_the_grid_beyond_what_was_observed() -> None:
    table = protect_counts(
        frame([("a", 30), ("c", 40)], ["g"]), ["g"], RULES, margins=False, levels={"g": ["a", "b", "c", "d"]}
    )
    assert [r["g"] for r in table.to_records()] == ["a", "b", "c", "d"]
    # Two hidden zeros and a known total would pin both at zero, so a third cell hides with them.
    assert [r["suppressed"] for r in table.to_records()] == [True, True, False, True]


def test_a_null_level_is_kept_as_its_own_group_and_sorted_last() -> None:
    table = protect_counts(frame([(None, 15), ("b", 30), ("a", 20)], ["g"]), ["g"], RULES, margins=True)
    rows = table.to_records()
    assert [(r["g"], r["margin"]) for r in rows] == [("a", None), ("b", None), (None, None), (None, "total")]
    assert rows[2]["count"] == 15


def test_three_group_columns_get_the_grand_total_only() -> None:
    rows = [(s, a, o, 20) for s in "FM" for a in ("<40", "40+") for o in (0, 1)]
    table = protect_counts(
        frame(rows, ["sex", "age", "outcome"]), ["sex", "age", "outcome"], RULES, margins=True
    )
    margins = [r for r in table.to_records() if r["margin"] is not None]
    assert margins == [
        {
            "sex": None,
            "age": None,
            "outcome": None,
            "count": 160,
            "suppressed": False,
            "suppression_reason": None,
            "margin": "total",
        }
    ]


def test_report_explains_primary_and_complementary_in_words() -> None:
    table = protect_counts(
        frame([("a", 3), ("b", 4), ("c", 2), ("d", 30), ("e", 40), ("f", 50)], ["g"]),
        ["g"],
        RULES,
        margins=True,
    )
    report = table.report
    assert (report.suppressed_primary, report.cells, report.margins) == (3, 6, 1)
    assert report.reasons[0] == "3 cells below the minimum of 10 suppressed"
    if report.suppressed_complementary:
        assert report.reasons[1].endswith(
            "suppressed so that the suppressed ones cannot be recovered from the totals"
        )
    assert report.to_dict()["suppressed"] == report.suppressed


def test_rounding_applies_to_released_values_only() -> None:
    table = protect_counts(
        frame([("a", 3), ("b", 12), ("c", 13), ("d", 27)], ["g"]),
        ["g"],
        DisclosureRules(10, round_to=5),
        margins=True,
    )
    rows = {r["g"] if r["margin"] is None else "total": r for r in table.to_records()}
    assert rows["a"]["count"] is None
    for key, released in (("c", 15), ("d", 25), ("total", 55)):
        if not rows[key]["suppressed"]:
            assert rows[key]["count"] == released
    assert "released counts rounded to the nearest multiple of 5" in table.report.reasons
    assert table.report.round_to == 5 and table.report.to_dict()["rounded"] is True


def test_records_are_plain_json() -> None:
    table = protect_counts(frame([("F", 2), ("M", 30), ("X", 15)], ["sex"]), ["sex"], RULES, margins=True)
    text = json.dumps(table.to_dict())
    back = json.loads(text)
    assert back["disclosure"]["kind"] == "count"
    assert {r["sex"] for r in back["rows"]} == {"F", "M", "X", None}
    assert all(r["count"] is None for r in back["rows"] if r["suppressed"])


def test_dates_and_decimals_from_the_store_become_json() -> None:
    """PostgreSQL hands back Decimal numerics and dates; the records stay plain JSON."""
    months = pd.DataFrame(
        {
            "month": [dt.date(2024, 1, 1), dt.date(2024, 2, 1), pd.Timestamp("2024-03-01")],
            "count": [Decimal(30), Decimal(40), Decimal(50)],
        }
    )
    rows = protect_counts(months, ["month"], RULES, margins=False).to_records()
    json.dumps(rows)
    assert [(r["month"], r["count"]) for r in rows][:2] == [("2024-01-01", 30), ("2024-02-01", 40)]
    codes = pd.DataFrame({"code": [Decimal("1"), Decimal("2.5")], "count": [30, 40]})
    rows = protect_counts(codes, ["code"], RULES, margins=False).to_records()
    assert [r["code"] for r in rows] == [1, 2.5]


def test_the_frame_uses_nullable_integers() -> None:
    table = protect_counts(frame([("F", 2), ("M", 30), ("X", 15)], ["sex"]), ["sex"], RULES, margins=False)
    assert str(table.frame["count"].dtype) == "Int64"
    assert table.frame["count"].isna().tolist() == table.frame["suppressed"].tolist()


def test_duckdb_executor_output_is_accepted_as_is() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE p AS SELECT CASE WHEN i % 3 = 0 THEN 'F' ELSE 'M' END AS sex, "
        "CASE WHEN i = 7 THEN NULL WHEN i % 2 = 0 THEN 'young' ELSE 'old' END AS band FROM range(200) t(i)"
    )
    df = con.execute('SELECT sex, band, count(*) AS "count" FROM p GROUP BY ALL').df()
    table = protect_counts(df, ["sex", "band"], RULES, margins=True)
    lonely = cell(table, sex="M", band=None, margin=None)  # the one patient with a null band
    assert lonely["suppressed"] and lonely["count"] is None
    assert cell(table, sex=None, band=None, margin="total")["count"] == 200


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (pd.DataFrame({"g": ["a"], "n": [3]}), "lacks the column"),
        (pd.DataFrame({"g": ["a", "b"], "count": [3, -1]}), "non-negative whole counts"),
        (pd.DataFrame({"g": ["a", "b"], "count": [3.5, 20]}), "non-negative whole counts"),
        (pd.DataFrame({"g": ["a", "b"], "count": [3, None]}), "missing value"),
        (pd.DataFrame({"g": ["a", "a"], "count": [30, 20]}), "same group twice"),
        (pd.DataFrame({"g": ["a", "b"], "count": ["x", "y"]}), "numeric"),
        (pd.DataFrame({"g": [["a"], ["b"]], "count": [30, 20]}), "cannot label a group"),
    ],
)
def test_malformed_aggregates_are_refused_without_their_values(df: pd.DataFrame, message: str) -> None:
    with pytest.raises(InvalidAggregate, match=message) as info:
        protect_counts(df, ["g"], RULES, margins=False)
    assert "-1" not in str(info.value) and "3.5" not in str(info.value)


def test_a_table_resting_on_fewer_rows_than_the_minimum_is_refused_whole() -> None:
    with pytest.raises(QuerySetTooSmall):
        protect_counts(frame([("a", 4), ("b", 5)], ["g"]), ["g"], RULES, margins=True)
    with pytest.raises(QuerySetTooSmall):
        protect_counts(frame([], ["g"]), ["g"], RULES, margins=True)


# --- attacks -----------------------------------------------------------------------------------------


def consistent_values(
    table: ProtectedTable, rules: DisclosureRules, group_cols: list[str]
) -> list[dict[int, int]]:
    """Brute force: every integer completion of the hidden cells consistent with what was released.

    The attacker knows the released counts (exactly: rounding is 1 here), the grand total, and what the
    labels say: a small entry is below the minimum, a complement at or above it. Hidden cells are guessed;
    margins follow from them and must match what was released or what the labels allow.
    """
    rows = table.to_records()
    total = next(r["count"] for r in rows if r["margin"] == "total")
    inner = [i for i, r in enumerate(rows) if r["margin"] is None]
    hidden = [i for i in inner if rows[i]["suppressed"]]

    def margin_of(kind: str, col: str, level: Any) -> dict[str, Any]:
        return next(r for r in rows if r["margin"] == kind and r[col] == level)

    def ceiling(i: int) -> int:
        top = int(total)
        if len(group_cols) == 2:
            for kind, col in (("row", group_cols[0]), ("column", group_cols[1])):
                m = margin_of(kind, col, rows[i][col])
                top = min(top, int(m["count"]) if m["count"] is not None else top)
        return top

    ranges = []
    for i in hidden:
        small = rows[i]["suppression_reason"] == REASON_BELOW_MIN
        low = 0 if small else rules.min_cell_count
        ranges.append(range(low, (rules.min_cell_count - 1 if small else ceiling(i)) + 1))
    solutions = []
    for guess in itertools.product(*ranges):
        values = {i: rows[i]["count"] for i in inner}
        values.update(zip(hidden, guess, strict=True))
        if sum(values.values()) == total and _margins_hold(rows, values, group_cols, rules):
            solutions.append(dict(zip(hidden, guess, strict=True)))
    return solutions


def _margins_hold(
    rows: list[dict[str, Any]], values: dict[int, int], group_cols: list[str], rules: DisclosureRules
) -> bool:
    if len(group_cols) != 2:
        return True
    for kind, col in (("row", group_cols[0]), ("column", group_cols[1])):
        for m in (r for r in rows if r["margin"] == kind):
            got = sum(v for i, v in values.items() if rows[i][col] == m[col])
            if m["suppression_reason"] is None and got != m["count"]:
                return False
            if m["suppression_reason"] == REASON_BELOW_MIN and got >= rules.min_cell_count:
                return False
            if m["suppression_reason"] == REASON_COMPLEMENTARY and got < rules.min_cell_count:
                return False
    return True


def test_attack_group_by_that_isolates_one_patient() -> None:
    """Grouping by a rare diagnosis puts one patient in a cell: the cell hides, and stays hidden."""
    df = frame([("common", 180), ("rare", 1), ("other", 24)], ["diagnosis"])
    table = protect_counts(df, ["diagnosis"], RULES, margins=True)
    rare = cell(table, diagnosis="rare")
    assert rare["suppressed"] and rare["count"] is None and rare["suppression_reason"] == REASON_BELOW_MIN
    # total - common alone would give rare + other; the complement hides 'other' too.
    assert cell(table, diagnosis="other")["suppressed"]
    solutions = consistent_values(table, RULES, ["diagnosis"])
    assert len({s[1] for s in solutions}) > 1, "the lone patient's cell must not be recoverable"


def test_attack_recover_a_hidden_cell_from_row_and_column_margins() -> None:
    """With margins printed, row total minus the row's released cells would give a lone hidden cell."""
    df = frame(
        [
            ("F", "<40", 3),
            ("F", "40+", 25),
            ("M", "<40", 40),
            ("M", "40+", 30),
            ("X", "<40", 12),
            ("X", "40+", 11),
        ],
        ["sex", "age"],
    )
    table = protect_counts(df, ["sex", "age"], RULES, margins=True)
    rows = table.to_records()
    target = next(
        i for i, r in enumerate(rows) if r["sex"] == "F" and r["age"] == "<40" and r["margin"] is None
    )
    # Naive attack: for each line, total minus the released entries. Never a single unknown left.
    for col in ("sex", "age"):
        line = [r for r in rows if r["margin"] is None and r[col] == rows[target][col]]
        assert sum(r["suppressed"] for r in line) >= 2
    # Full attack: every table consistent with the release; the hidden cell takes more than one value.
    solutions = consistent_values(table, RULES, ["sex", "age"])
    assert len({s[target] for s in solutions}) > 1


def test_attack_two_small_cells_whose_sum_pins_both() -> None:
    """Cells 9 and 9 hidden as small, total known: their sum 18 would force both to 9 (labels say < 10)."""
    table = protect_counts(
        frame([("a", 9), ("b", 9), ("c", 30), ("d", 40)], ["g"]), ["g"], RULES, margins=True
    )
    assert cell(table, g="c")["suppressed"], "a third cell must hide so the pair is not pinned"
    solutions = consistent_values(table, RULES, ["g"])
    assert len({s[0] for s in solutions}) > 1


def test_attack_complement_tied_with_a_released_cell() -> None:
    """5 hidden, the smallest other cell 10 hidden as its complement, another 10 shown: the complement
    would be pinned to 10 (at least the minimum, at most the smallest shown) and so the 5 recovered."""
    table = protect_counts(frame([("a", 5), ("b", 10), ("c", 10)], ["g"]), ["g"], RULES, margins=True)
    assert cell(table, g="b")["suppressed"] and cell(table, g="c")["suppressed"]


def test_attack_no_output_holds_a_hidden_true_value_in_its_place() -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        grid = rng.poisson(rng.choice([4, 9, 15]), (3, 4))
        if grid.sum() < 10:
            continue
        df = frame([(f"r{r}", f"c{c}", int(grid[r, c])) for r in range(3) for c in range(4)], ["r", "c"])
        for round_to in (1, 5, 10):
            try:
                table = protect_counts(df, ["r", "c"], DisclosureRules(10, round_to=round_to), margins=True)
            except UnprotectableTable:
                continue
            for row in table.to_records():
                if row["suppressed"]:
                    assert row["count"] is None
                    assert set(row) == {"r", "c", "count", "suppressed", "suppression_reason", "margin"}


def test_attack_rounding_never_shows_a_small_cell_exactly() -> None:
    """Rounding is applied to released values only; a hidden 7 never appears as 5 or 10 in its place."""
    table = protect_counts(
        frame([("a", 7), ("b", 33), ("c", 41), ("d", 12)], ["g"]),
        ["g"],
        DisclosureRules(10, round_to=5),
        margins=True,
    )
    a = cell(table, g="a")
    assert a["count"] is None and a["suppressed"]
    released = [r["count"] for r in table.to_records() if not r["suppressed"]]
    assert all(v % 5 == 0 for v in released)


def test_attack_margins_not_printed_are_still_assumed_known() -> None:
    """A coarser query gives the margins anyway, so hiding them from print is no protection."""
    df = frame([("F", "<40", 3), ("F", "40+", 25), ("M", "<40", 40), ("M", "40+", 30)], ["sex", "age"])
    table = protect_counts(df, ["sex", "age"], RULES, margins=False)
    assert sum(r["suppressed"] for r in table.to_records()) == 4  # a 2x2 with one small cell hides all four


def test_a_large_table_is_refused_only_when_a_cell_must_be_hidden() -> None:
    from pseudonymize.disclosure import (
        MAX_GRID_CELLS,
        MAX_SUPPRESSED_ENTRIES,
        TableTooLarge,
        protect_histogram,
    )

    bins = {"bin": list(range(51))}
    # 60 groups x 51 bins: more entries than suppression handles in bounded time, one cell below 10.
    rows = [(g, b, 3 if (g, b) == (0, 0) else 12) for g in range(60) for b in range(51)]
    frame = pd.DataFrame(rows, columns=["bmi", "bin", "count"])
    with pytest.raises(TableTooLarge) as refused:
        protect_histogram(frame, ["bmi", "bin"], RULES, levels=bins)
    assert f"more than {MAX_SUPPRESSED_ENTRIES:,} entries" in refused.value.reason
    # The same table with nothing to hide is released whole, at once.
    frame.loc[0, "count"] = 12
    table = protect_histogram(frame, ["bmi", "bin"], RULES, levels=bins)
    assert not any(r["suppressed"] for r in table.to_records())
    # A grid too large to lay out is refused before any is: observed levels multiply.
    huge = pd.DataFrame([(v, v, v % 51, 12) for v in range(2_000)], columns=["a", "b", "bin", "count"])
    with pytest.raises(TableTooLarge) as too_many:
        protect_histogram(huge, ["a", "b", "bin"], RULES, levels=bins)
    assert f"more than {MAX_GRID_CELLS:,} entries" in too_many.value.reason
