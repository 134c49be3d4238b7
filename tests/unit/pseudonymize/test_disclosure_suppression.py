"""The suppression engine: line systems, the pinned-entry audit against an independent rank oracle."""

from __future__ import annotations

import numpy as np
import pytest

from pseudonymize.disclosure import (
    DisclosureRules,
    QuerySetTooSmall,
    UnprotectableTable,
    WideTableWithHiddenCell,
)
from pseudonymize.disclosure.suppression import LineSystem, Status, pinned_entries, suppress

RULES = DisclosureRules(min_cell_count=10)
HIDDEN_CYCLES = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
BRIDGE = (1, 2)


def bridged_table() -> tuple[LineSystem, list[Status]]:
    """Two 2x2 blocks of small hidden cells joined by one hidden cell: that one is determined."""
    grid = np.full((4, 4), 50)
    for r, c in [*HIDDEN_CYCLES, BRIDGE]:
        grid[r, c] = 5
    system = LineSystem.two_way(grid)
    status = [Status.RELEASED] * len(system.values)
    for r, c in [*HIDDEN_CYCLES, BRIDGE]:
        status[r * 4 + c] = Status.PRIMARY
    return system, status


def determined_by_rank(system: LineSystem, status: list[Status]) -> set[int]:
    """Oracle: a hidden entry is fixed by the equations alone iff its unit vector is in their row space."""
    hidden = [e for e, s in enumerate(status) if s != Status.RELEASED]
    a = np.zeros((len(system.lines), len(hidden)))
    for row, line in enumerate(system.lines):
        for e, coef in line:
            if e in hidden:
                a[row, hidden.index(e)] = coef
    rank = np.linalg.matrix_rank(a)
    fixed = set()
    for k, e in enumerate(hidden):
        unit = np.zeros(len(hidden))
        unit[k] = 1.0
        if np.linalg.matrix_rank(np.vstack([a, unit])) == rank:
            fixed.add(e)
    return fixed


def test_two_way_entries_are_cells_then_row_then_column_totals_then_grand() -> None:
    system = LineSystem.two_way(np.array([[1, 2, 3], [4, 5, 6]]))
    assert system.values == [1, 2, 3, 4, 5, 6, 6, 15, 5, 7, 9, 21]
    assert system.grand_total == 11
    assert len(system.lines) == 2 + 3 + 2
    for line in system.lines:
        assert sum(system.values[e] * coef for e, coef in line) == 0
    assert all(1 <= len(m) <= 2 for m in system.memberships)


def test_one_line_and_single_entry_systems() -> None:
    line = LineSystem.one_line([3, 4, 30])
    assert (line.values, line.grand_total) == ([3, 4, 30, 37], 3)
    single = LineSystem.single(12)
    assert (single.lines, single.grand_total) == ([], 0)
    assert LineSystem.for_grid(np.zeros((2, 2, 2), dtype=int)).lines[0][-1] == (8, -1)


def test_every_line_with_two_hidden_cells_can_still_pin_a_bridge() -> None:
    """The brief's 'two per line' rule is necessary, not sufficient: the audit finds the bridge."""
    system, status = bridged_table()
    for line in system.lines:
        assert sum(status[e] != Status.RELEASED for e, _ in line) != 1
    bridge = BRIDGE[0] * 4 + BRIDGE[1]
    assert determined_by_rank(system, status) == {bridge}
    assert pinned_entries(system, status, RULES) == [bridge]


def test_suppress_unpins_the_bridge() -> None:
    system, _ = bridged_table()
    status = suppress(system, RULES)
    assert pinned_entries(system, status, RULES) == []
    assert determined_by_rank(system, status) == set()


def test_bounds_pin_what_equations_alone_do_not() -> None:
    """9 and 9 hidden as small with a released total 18 apart: no equation fixes either, the labels do."""
    system = LineSystem.one_line([9, 9, 30])
    status = [Status.PRIMARY, Status.PRIMARY, Status.RELEASED, Status.RELEASED]
    assert determined_by_rank(system, status) == set()
    assert pinned_entries(system, status, RULES) == [0, 1]
    assert suppress(system, RULES)[2] == Status.COMPLEMENTARY


def test_a_table_that_cannot_be_protected_is_refused() -> None:
    """Two cells of 9 and a known total of 18: whatever is hidden, both are 9."""
    with pytest.raises(UnprotectableTable) as info:
        suppress(LineSystem.one_line([9, 9]), RULES)
    assert "9" not in str(info.value).replace("minimum of 10", "")


def test_the_grand_total_is_never_hidden_and_must_pass_the_cell_rule() -> None:
    status = suppress(LineSystem.one_line([3, 4, 5, 30]), RULES)
    assert status[-1] == Status.RELEASED
    with pytest.raises(QuerySetTooSmall):
        suppress(LineSystem.one_line([3, 4]), RULES)
    with pytest.raises(QuerySetTooSmall):
        suppress(LineSystem.single(0), DisclosureRules(10, keep_zero_cells=True))


def test_a_label_that_fixes_the_value_by_itself_is_not_chased() -> None:
    """With min_cell_count 1 the only small count is 0: its label says so, and hiding more cannot help."""
    rules = DisclosureRules(min_cell_count=1)
    status = suppress(LineSystem.one_line([0, 5, 7]), rules)
    assert status == [Status.PRIMARY, Status.COMPLEMENTARY, Status.COMPLEMENTARY, Status.RELEASED]


def test_a_table_of_three_or_more_dimensions_is_released_whole_or_not_at_all() -> None:
    # Each cell of a two-column sub-table (a coarser query's answer) sums a line of the wider table, so a
    # hidden cell there would come back; none is hidden: the table is refused instead.
    dense = np.full((2, 3, 4), 12)
    system = LineSystem.for_grid(dense)
    assert system.whole_only and suppress(system, RULES) == [Status.RELEASED] * (dense.size + 1)
    for shape, small in [((2, 3, 4), (1, 2, 3)), ((2, 2, 2, 2), (0, 1, 0, 1))]:
        grid = np.full(shape, 40)
        grid[small] = 3
        with pytest.raises(WideTableWithHiddenCell) as info:
            suppress(LineSystem.for_grid(grid), RULES)
        assert "three or more dimensions" in info.value.reason and "3" not in info.value.reason
    zero = np.full((2, 2, 2), 40)
    zero[0, 0, 0] = 0  # an empty combination is hidden unless the agreement lets zeros show
    with pytest.raises(WideTableWithHiddenCell):
        suppress(LineSystem.for_grid(zero), RULES)
    shown = suppress(LineSystem.for_grid(zero), DisclosureRules(min_cell_count=10, keep_zero_cells=True))
    assert Status.PRIMARY not in shown
    # Two dimensions keep their full margins and complementary suppression.
    flat = np.full((3, 3), 40)
    flat[0, 0] = 3
    assert not LineSystem.for_grid(flat).whole_only
    assert Status.COMPLEMENTARY in suppress(LineSystem.for_grid(flat), RULES)
