"""Properties of disclosure control over random 1-D and 2-D tables: nothing hidden can be recovered.

The attacker here is written independently of the library: from the released rows, the labels and the
published rules it sets up the table's additive equations and asks a linear program for the smallest and
largest value every hidden entry can take. Protection means the two always differ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog  # type: ignore[import-untyped]  # scipy ships no stubs

from pseudonymize.disclosure import (
    DisclosureRules,
    ProtectedTable,
    QuerySetTooSmall,
    UnprotectableTable,
    protect_counts,
    protect_summary,
)

COUNT = st.one_of(st.integers(0, 12), st.integers(0, 40))
RULES = st.builds(
    DisclosureRules,
    min_cell_count=st.sampled_from([3, 5, 10]),
    round_to=st.sampled_from([1, 1, 5]),
    keep_zero_cells=st.booleans(),
)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_way_frame(counts: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"a": [f"a{i}" for i in range(len(counts))], "count": counts})


def two_way_frame(grid: np.ndarray) -> pd.DataFrame:
    rows = [(f"r{r}", f"c{c}", int(grid[r, c])) for r in range(grid.shape[0]) for c in range(grid.shape[1])]
    return pd.DataFrame(rows, columns=["r", "c", "count"])


def entries_of(table: ProtectedTable, true_values: list[int]) -> list[dict[str, Any]]:
    """Each printed row with its true value beside what was released."""
    records = table.to_records()
    assert len(records) == len(true_values)
    return [{**rec, "true": v} for rec, v in zip(records, true_values, strict=True)]


def one_way_lines(k: int) -> list[list[tuple[int, int]]]:
    return [[(i, 1) for i in range(k)] + [(k, -1)]]


def two_way_lines(n_rows: int, n_cols: int) -> list[list[tuple[int, int]]]:
    inner = n_rows * n_cols
    rt = [inner + r for r in range(n_rows)]
    ct = [inner + n_rows + c for c in range(n_cols)]
    g = inner + n_rows + n_cols
    lines = [[(r * n_cols + c, 1) for c in range(n_cols)] + [(rt[r], -1)] for r in range(n_rows)]
    lines += [[(r * n_cols + c, 1) for r in range(n_rows)] + [(ct[c], -1)] for c in range(n_cols)]
    lines += [[(e, 1) for e in rt] + [(g, -1)], [(e, 1) for e in ct] + [(g, -1)]]
    return lines


def attacker_ranges(
    entries: list[dict[str, Any]], lines: list[list[tuple[int, int]]], rules: DisclosureRules, grand: int
) -> dict[int, tuple[float, float]]:
    """Smallest and largest value of each hidden entry consistent with everything the attacker knows.

    Released entries are taken at their exact value (stronger than the rounded release) and so is the grand
    total (a query without group-by gives it); a small cell lies in [0 or 1, m - 1]; a complement is at
    least m (0 when zeros may show) and, being the smallest released entry of one of its lines, at most the
    largest minimum of the released entries (grand total aside) of its lines.
    """
    m = rules.min_cell_count
    n = len(entries)
    bounds: list[tuple[float, float | None]] = []
    for i, e in enumerate(entries):
        reason = e["suppression_reason"]
        if reason is None or i == grand:
            assert reason is None, "the grand total is never hidden"
            bounds.append((e["true"], e["true"]))
        elif reason == "below min_cell_count":
            bounds.append((1 if rules.keep_zero_cells else 0, m - 1))
        else:
            assert reason == "complementary"
            ceiling = -math.inf
            for line in lines:
                members = [j for j, _ in line]
                if i not in members:
                    continue
                released = [
                    entries[j]["true"]
                    for j in members
                    if entries[j]["suppression_reason"] is None and j != grand
                ]
                ceiling = max(ceiling, min(released) if released else math.inf)
            floor = 0 if rules.keep_zero_cells else m
            bounds.append((floor, None if ceiling == math.inf else ceiling))
    a_eq = np.zeros((len(lines), n))
    for row, line in enumerate(lines):
        for j, coef in line:
            a_eq[row, j] = coef
    b_eq = np.zeros(len(lines))
    ranges = {}
    for i, e in enumerate(entries):
        if not e["suppressed"]:
            continue
        c = np.zeros(n)
        c[i] = 1.0
        low = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        high = linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        assert low.status == 0, "the true table must satisfy the attacker's constraints"
        ranges[i] = (low.fun, -high.fun if high.status == 0 else math.inf)
    return ranges


def assert_protected(
    entries: list[dict[str, Any]], lines: list[list[tuple[int, int]]], rules: DisclosureRules, grand: int
) -> None:
    for e in entries:
        if e["suppressed"]:
            assert e["count"] is None, "a hidden entry must never carry a number"
            assert e["suppression_reason"] in {"below min_cell_count", "complementary"}
        else:
            assert e["count"] is not None and e["suppression_reason"] is None
            assert e["count"] == rules.round(e["true"])
            # Every released entry passes the cell rule on its own.
            assert e["true"] >= rules.min_cell_count or (e["true"] == 0 and rules.keep_zero_cells)
    # The brief's condition: a line with a hidden entry holds at least two.
    for line in lines:
        hidden = sum(1 for j, _ in line if entries[j]["suppressed"])
        assert hidden != 1
        # Its released total minus its released parts counts the hidden parts together: a small group too.
        (total,) = [j for j, coef in line if coef < 0]
        parts = [entries[j]["true"] for j, coef in line if coef > 0 and entries[j]["suppressed"]]
        if parts and not entries[total]["suppressed"]:
            assert sum(parts) >= rules.min_cell_count
    for i, (low, high) in attacker_ranges(entries, lines, rules, grand).items():
        assert high - low > 0.5, f"entry {i} is pinned to {low}..{high}"


@SETTINGS
@given(counts=st.lists(COUNT, min_size=1, max_size=9), rules=RULES)
def test_one_way_tables_never_reveal_a_hidden_cell(counts: list[int], rules: DisclosureRules) -> None:
    if sum(counts) < rules.min_cell_count:
        with pytest.raises(QuerySetTooSmall):
            protect_counts(one_way_frame(counts), ["a"], rules, margins=True)
        return
    try:
        table = protect_counts(one_way_frame(counts), ["a"], rules, margins=True)
    except UnprotectableTable:
        return  # refusing is always safe; what is released must be protected
    entries = entries_of(table, [*counts, sum(counts)])
    assert_protected(entries, one_way_lines(len(counts)), rules, grand=len(counts))


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    data=st.data(),
    rules=RULES,
)
def test_two_way_tables_never_reveal_a_hidden_cell(
    shape: tuple[int, int], data: st.DataObject, rules: DisclosureRules
) -> None:
    n_rows, n_cols = shape
    grid = np.array(data.draw(st.lists(COUNT, min_size=n_rows * n_cols, max_size=n_rows * n_cols)))
    grid = grid.reshape(shape)
    if grid.sum() < rules.min_cell_count:
        with pytest.raises(QuerySetTooSmall):
            protect_counts(two_way_frame(grid), ["r", "c"], rules, margins=True)
        return
    try:
        table = protect_counts(two_way_frame(grid), ["r", "c"], rules, margins=True)
    except UnprotectableTable:
        return  # refusing is always safe; what is released must be protected
    true = [
        *grid.reshape(-1).tolist(),
        *grid.sum(axis=1).tolist(),
        *grid.sum(axis=0).tolist(),
        int(grid.sum()),
    ]
    entries = entries_of(table, [int(v) for v in true])
    assert_protected(entries, two_way_lines(n_rows, n_cols), rules, grand=len(true) - 1)


@SETTINGS
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4)), data=st.data(), rules=RULES)
def test_printing_margins_or_not_hides_the_same_cells(
    shape: tuple[int, int], data: st.DataObject, rules: DisclosureRules
) -> None:
    size = shape[0] * shape[1]
    grid = np.array(data.draw(st.lists(COUNT, min_size=size, max_size=size))).reshape(shape)
    assume(grid.sum() >= rules.min_cell_count)
    try:
        with_margins = protect_counts(two_way_frame(grid), ["r", "c"], rules, margins=True).frame
    except UnprotectableTable:
        with pytest.raises(UnprotectableTable):
            protect_counts(two_way_frame(grid), ["r", "c"], rules, margins=False)
        return
    without = protect_counts(two_way_frame(grid), ["r", "c"], rules, margins=False).frame
    cells = with_margins[with_margins["margin"].isna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(cells, without)


@SETTINGS
@given(
    groups=st.lists(
        st.tuples(st.integers(0, 25), st.floats(-50, 50, allow_nan=False)), min_size=1, max_size=7
    ),
    rules=RULES,
)
def test_summary_never_reveals_a_hidden_group_sum(
    groups: list[tuple[int, float]], rules: DisclosureRules
) -> None:
    n = [g[0] for g in groups]
    sums = [g[0] * g[1] for g in groups]
    df = pd.DataFrame(
        {"g": [f"g{i}" for i in range(len(n))], "n": n, "sum": sums, "sum_sq": [s * s for s in sums]}
    )
    if sum(n) < rules.min_cell_count:
        with pytest.raises(QuerySetTooSmall):
            protect_summary(df, ["g"], rules)
        return
    try:
        rows = protect_summary(df, ["g"], rules).to_records()
    except UnprotectableTable:
        return
    hidden = [r for r in rows if r["suppressed"]]
    for r in hidden:
        assert all(r[k] is None for k in ("n", "mean", "variance", "sum", "sum_sq"))
    # The overall total is known; one hidden group alone would equal it minus the released ones.
    assert len(hidden) != 1
    for r, size in zip(rows, n, strict=True):
        assert r["suppressed"] == (r["n"] is None)
        if not r["suppressed"]:
            assert size >= rules.min_cell_count or (size == 0 and rules.keep_zero_cells)
