"""Primary and complementary suppression over a table's additive lines, audited so nothing hidden is pinned.

A table and its totals are *entries*; a *line* says that its entries, with coefficients +1 (parts) and -1
(the total), sum to zero: one line for a 1-D table (cells and total), a row line and a column line per level
plus the two margin lines for a 2-D table. Each entry sits on one or two lines.

The researcher (the attacker we defend against) knows every released entry, the grand total (a query
without group-by gives it), the label of every hidden one and what the label implies: a cell hidden for
being small lies in [0 or 1, min_cell_count - 1]; a cell hidden as a complement is at least min_cell_count
(0 when zeros may show) and, because complements are always the smallest released entry of one of their
lines, at most the largest of the released minima of its lines. We release a table only when

- no line holds exactly one hidden entry (the brief's rule, and the cheap first pass);
- no line with a released total has hidden parts adding up to a small count (total minus the released
  parts would be that count);
- every hidden entry can still take two values consistent with all of the above. A hidden entry is pinned
  exactly when no feasible direction moves it, and feasible directions of these line systems are
  alternating walks through hidden entries (the constraint matrix is a network matrix, so a real move
  implies an integer one).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from enum import IntEnum

import numpy as np

from pseudonymize.disclosure.errors import (
    QuerySetTooSmall,
    TableTooLarge,
    UnprotectableTable,
    WideTableWithHiddenCell,
)
from pseudonymize.disclosure.rules import DisclosureRules

_FREE = -1  # the open end of an entry that sits on one line only: no constraint there


class Status(IntEnum):
    """Why an entry is (not) shown."""

    RELEASED = 0
    PRIMARY = 1  # below min_cell_count (or a zero the DSA does not let show)
    COMPLEMENTARY = 2  # hidden so a primary cannot be recovered from the totals


class LineSystem:
    """Entries with their true values and the additive lines that tie them."""

    def __init__(
        self, values: Sequence[int], lines: Sequence[Sequence[tuple[int, int]]], grand_total: int | None
    ) -> None:
        self.values = [int(v) for v in values]
        self.lines = [list(line) for line in lines]
        self.grand_total = grand_total
        self.whole_only = False
        """Released only with nothing hidden: its sub-tables are lines this system does not hold."""
        self.memberships: list[list[tuple[int, int]]] = [[] for _ in self.values]
        for index, line in enumerate(self.lines):
            for entry, coef in line:
                self.memberships[entry].append((index, coef))

    @classmethod
    def single(cls, value: int) -> LineSystem:
        """A lone total (a query without group-by): one entry, no line."""
        return cls([value], [], 0)

    @classmethod
    def one_line(cls, cells: Sequence[int]) -> LineSystem:
        """Cells and their total (last entry): a 1-D table, or a wider one with only its grand total."""
        k = len(cells)
        line = [(i, 1) for i in range(k)] + [(k, -1)]
        return cls([*cells, sum(int(c) for c in cells)], [line], k)

    @classmethod
    def for_grid(cls, counts: np.ndarray) -> LineSystem:
        """The lines a grouped count releases or implies: none, one total, or full 2-D margins.

        A table of three or more dimensions gets its grand total and is released only whole
        (`whole_only`): each cell of its two-dimensional sub-tables, which coarser queries release, sums
        a line of it, and suppression over all those lines at once is no longer the network problem the
        audit below solves exactly. With nothing hidden there is nothing to give back.
        """
        if counts.ndim == 0:
            return cls.single(int(counts))
        if counts.ndim == 2:
            return cls.two_way(counts)
        system = cls.one_line([int(v) for v in counts.reshape(-1)])
        system.whole_only = counts.ndim >= 3
        return system

    @classmethod
    def two_way(cls, grid: np.ndarray) -> LineSystem:
        """An R x C table with row totals, column totals and the grand total, in that entry order."""
        n_rows, n_cols = grid.shape
        inner = n_rows * n_cols
        row_total = [inner + r for r in range(n_rows)]
        col_total = [inner + n_rows + c for c in range(n_cols)]
        grand = inner + n_rows + n_cols
        values = [int(v) for v in grid.reshape(-1)]
        values += [int(v) for v in grid.sum(axis=1)] + [int(v) for v in grid.sum(axis=0)]
        values.append(int(grid.sum()))
        lines: list[list[tuple[int, int]]] = []
        for r in range(n_rows):
            lines.append([(r * n_cols + c, 1) for c in range(n_cols)] + [(row_total[r], -1)])
        for c in range(n_cols):
            lines.append([(r * n_cols + c, 1) for r in range(n_rows)] + [(col_total[c], -1)])
        lines.append([(e, 1) for e in row_total] + [(grand, -1)])
        lines.append([(e, 1) for e in col_total] + [(grand, -1)])
        return cls(values, lines, grand)


MAX_SUPPRESSED_ENTRIES = 2_000
"""The most entries (cells and margins) of a table with a cell to hide. Complementary suppression's time
grows faster than the entries: on a table of small counts, alone on one core, about 0.5 s at 1,000 cells,
2 s at 2,000, 13 s at 5,000 and 54 s at 10,000, and a query holds a pool thread that long. A larger table
with nothing to hide is released as it is."""


def suppress(system: LineSystem, rules: DisclosureRules) -> list[Status]:
    """Hide small entries, then complements until no line betrays one and no hidden entry is pinned.

    The grand total is what the same query without group-by answers, so it is never hidden: a table
    resting on fewer than min_cell_count rows is refused whole (as `check_query_set` refuses the filtered
    set), and a table whose hidden entries stay pinned once every other entry is hidden is refused too.
    """
    grand = system.grand_total
    if grand is not None and system.values[grand] < rules.min_cell_count:
        raise QuerySetTooSmall(rules.min_cell_count)
    status = [Status.PRIMARY if rules.is_small(v) else Status.RELEASED for v in system.values]
    if system.whole_only and Status.PRIMARY in status:
        raise WideTableWithHiddenCell(rules.min_cell_count)
    if len(status) > MAX_SUPPRESSED_ENTRIES and Status.PRIMARY in status:
        raise TableTooLarge(MAX_SUPPRESSED_ENTRIES)
    while True:
        if _second_suppressions(system, status) or _small_hidden_unions(system, status, rules):
            continue
        pinned = pinned_entries(system, status, rules)
        if not pinned:
            return status
        if not _unpin(system, status, pinned):
            raise UnprotectableTable(rules.min_cell_count)


def _smallest_in(system: LineSystem, status: list[Status], entries: Iterable[int]) -> int | None:
    """The complement to hide next: the smallest released entry, never the grand total."""
    keys = [
        (system.values[e], e) for e in entries if status[e] == Status.RELEASED and e != system.grand_total
    ]
    return min(keys)[1] if keys else None


def _second_suppressions(system: LineSystem, status: list[Status]) -> bool:
    """Give every line holding exactly one hidden entry a second one: its smallest candidate."""
    changed = False
    for line in system.lines:
        hidden = [e for e, _ in line if status[e] != Status.RELEASED]
        if len(hidden) != 1:
            continue
        # The globally smallest candidate is also the smallest of each line it sits on, so the bound an
        # attacker draws from "a complement is the smallest of one of its lines" still holds.
        choice = _smallest_in(system, status, [e for e, _ in line])
        if choice is None:
            choice = _smallest_in(system, status, range(len(system.values)))
        if choice is not None:
            status[choice] = Status.COMPLEMENTARY
            changed = True
    return changed


def _small_hidden_unions(system: LineSystem, status: list[Status], rules: DisclosureRules) -> bool:
    """Hide one more entry on every line whose hidden parts together would make a small group.

    When a line's total is released, its total minus its released parts is the count of the union of its
    hidden parts: a number released in all but name, so it must pass the cell rule like any other.
    """
    changed = False
    for line in system.lines:
        parts_hidden = [e for e, coef in line if coef > 0 and status[e] != Status.RELEASED]
        total_released = all(status[e] == Status.RELEASED for e, coef in line if coef < 0)
        if not parts_hidden or not total_released:
            continue
        if rules.is_small(sum(system.values[e] for e in parts_hidden)):
            choice = _smallest_in(system, status, [e for e, coef in line if coef > 0])
            if choice is not None:
                status[choice] = Status.COMPLEMENTARY
                changed = True
    return changed


def _unpin(system: LineSystem, status: list[Status], pinned: list[int]) -> bool:
    """Hide one more candidate on the lines of each pinned entry; False when nothing is left to hide."""
    touched: set[int] = set()
    changed = False
    for entry in pinned:
        lines = [index for index, _ in system.memberships[entry]]
        if touched.intersection(lines):
            continue  # that line already gained a hidden entry this round; audit again first
        choice = _smallest_in(system, status, [e for index in lines for e, _ in system.lines[index]])
        if choice is None:
            choice = _smallest_in(system, status, range(len(system.values)))
        if choice is None:
            continue
        status[choice] = Status.COMPLEMENTARY
        touched.update(lines)
        touched.update(index for index, _ in system.memberships[choice])
        changed = True
    return changed


def attacker_bounds(
    system: LineSystem, status: Sequence[Status], rules: DisclosureRules
) -> tuple[list[float], list[float]]:
    """What the table tells about each entry: exact if released, else the range its label implies."""
    small_floor = 1 if rules.keep_zero_cells else 0
    lo: list[float] = []
    hi: list[float] = []
    for entry, value in enumerate(system.values):
        if status[entry] == Status.RELEASED:
            lo.append(value)
            hi.append(value)
        elif status[entry] == Status.PRIMARY:
            lo.append(small_floor)
            hi.append(rules.min_cell_count - 1)
        else:
            # A complement passed the cell rule, unless it is a zero the DSA lets show.
            lo.append(0 if rules.keep_zero_cells else rules.min_cell_count)
            hi.append(_complement_ceiling(system, status, entry))
    return lo, hi


def _complement_ceiling(system: LineSystem, status: Sequence[Status], entry: int) -> float:
    """A complement is the smallest candidate of one of its lines: at most the largest such minimum."""
    if not system.memberships[entry]:
        return math.inf
    ceiling = -math.inf
    for index, _ in system.memberships[entry]:
        released = [
            system.values[e]
            for e, _ in system.lines[index]
            if status[e] == Status.RELEASED and e != system.grand_total
        ]
        ceiling = max(ceiling, min(released) if released else math.inf)
    return ceiling


def pinned_entries(system: LineSystem, status: Sequence[Status], rules: DisclosureRules) -> list[int]:
    """Hidden entries whose value the released table and the labels determine.

    A small cell whose label alone fixes it (min_cell_count 1, or 2 with zeros shown) is left out: no
    complement can help it, and the policy never allows such thresholds below the site default.
    """
    lo, hi = attacker_bounds(system, status, rules)
    loose_ends = [
        e for e, state in enumerate(status) if state != Status.RELEASED and len(system.memberships[e]) == 1
    ]
    pinned = []
    for entry, state in enumerate(status):
        if state == Status.RELEASED:
            continue
        if state == Status.PRIMARY and lo[entry] == hi[entry]:
            continue
        if not any(_movable(system, status, lo, hi, loose_ends, entry, sign) for sign in (1, -1)):
            pinned.append(entry)
    return pinned


def _can_step(value: int, lo: float, hi: float, sign: int) -> bool:
    return value < hi if sign > 0 else value > lo


def _movable(
    system: LineSystem,
    status: Sequence[Status],
    lo: Sequence[float],
    hi: Sequence[float],
    loose_ends: Sequence[int],
    start: int,
    sign: int,
) -> bool:
    """Whether some feasible direction changes `start` by `sign`: a breadth-first alternating walk.

    From a line entered with an unbalanced contribution r, the walk leaves through another hidden entry
    whose change cancels r; the open end of a one-line entry absorbs anything. The walk closes when it
    reaches the other line of `start` with the contribution that balances it. Summing the steps of any such
    walk gives a direction that keeps every line balanced and respects every bound's side, even if an entry
    is crossed twice, so reaching the goal proves `start` is not determined.
    """
    values = system.values
    if not _can_step(values[start], lo[start], hi[start], sign):
        return False
    homes = system.memberships[start]
    if not homes:
        return True  # on no line at all: nothing released constrains it
    first_line, first_coef = homes[0]
    if len(homes) == 2:
        goal_line, goal_coef = homes[1]
        goal_contribution = -goal_coef * sign
    else:
        goal_line, goal_contribution = _FREE, 0
    seen = {(first_line, first_coef * sign)}
    queue = deque(seen)
    while queue:
        node, residual = queue.popleft()
        if node == _FREE:
            steps = [(e, s) for e in loose_ends if e != start for s in (1, -1)]
        else:
            steps = [
                (e, -residual * coef)
                for e, coef in system.lines[node]
                if e != start and status[e] != Status.RELEASED
            ]
        for entry, step in steps:
            if not _can_step(values[entry], lo[entry], hi[entry], step):
                continue
            if node == _FREE:
                nxt, coef = system.memberships[entry][0]
            else:
                others = [(line, c) for line, c in system.memberships[entry] if line != node]
                nxt, coef = others[0] if others else (_FREE, 0)
            contribution = coef * step
            if nxt == goal_line and (nxt == _FREE or contribution == goal_contribution):
                return True
            state = (nxt, 0 if nxt == _FREE else contribution)
            if state not in seen:
                seen.add(state)
                queue.append(state)
    return False
