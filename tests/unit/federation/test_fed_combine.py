"""Pooling released tables: sums, exact summaries, and the attack a pooled table must not open."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

from gateway.federation import coordinator as coordinator_module
from gateway.federation.combine import (
    REASON_AT_SITE,
    REASON_POOLED_MIN,
    CombineError,
    InvalidSiteAnswer,
    SiteTable,
    combine,
)
from gateway.federation.coordinator import Coordinator, SiteOutcome
from gateway.query import parse_query_spec
from gateway.refusal import Refusal
from pseudonymize.disclosure import DisclosureRules, protect_counts, protect_summary

RULES = DisclosureRules(min_cell_count=10)


def _crosstab(site: str, grid: dict[tuple[str, str], int], rules: DisclosureRules = RULES) -> SiteTable:
    frame = pd.DataFrame([{"a": a, "b": b, "n": n} for (a, b), n in grid.items()])
    table = protect_counts(frame, ["a", "b"], rules, margins=True, count_col="n")
    body = {"kind": "crosstab", "columns": list(table.frame.columns), **table.to_dict()}
    return SiteTable.from_body(site, body, "crosstab", ["a", "b"])


def _rows(pooled: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r["a"], r["b"], r["margin"]): r for r in pooled.rows}


BIG_A = {("x", "p"): 40, ("x", "q"): 50, ("y", "p"): 60, ("y", "q"): 70}
BIG_B = {("x", "p"): 11, ("x", "q"): 22, ("y", "p"): 33, ("y", "q"): 44}
# Site A has a small cell (3): it and complements are hidden at A.
SMALL_A = {("x", "p"): 3, ("x", "q"): 50, ("y", "p"): 60, ("y", "q"): 70, ("z", "p"): 25, ("z", "q"): 30}
SMALL_B = {("x", "p"): 15, ("x", "q"): 22, ("y", "p"): 33, ("y", "q"): 44, ("z", "p"): 12, ("z", "q"): 19}


def test_released_tables_sum_cell_by_cell_with_margins() -> None:
    pooled = combine("crosstab", ["a", "b"], [_crosstab("A", BIG_A), _crosstab("B", BIG_B)])
    rows = _rows(pooled)
    for key, n in BIG_A.items():
        assert rows[(*key, None)]["count"] == n + BIG_B[key]
    assert rows[(None, None, "total")]["count"] == sum(BIG_A.values()) + sum(BIG_B.values())
    assert rows[("x", None, "row")]["count"] == 40 + 50 + 11 + 22
    assert pooled.suppressed == 0


def test_a_level_missing_at_a_site_counts_as_its_zero() -> None:
    b_without_y = {k: v for k, v in BIG_B.items() if k[0] != "y"}
    rows = _rows(combine("crosstab", ["a", "b"], [_crosstab("A", BIG_A), _crosstab("B", b_without_y)]))
    assert rows[("y", "p", None)]["count"] == 60


def test_an_entry_hidden_at_any_site_stays_hidden() -> None:
    a = _crosstab("A", SMALL_A)
    hidden_at_a = {(r["a"], r["b"], r["margin"]) for r in a.rows if r["suppressed"]}
    assert ("x", "p", None) in hidden_at_a and len(hidden_at_a) >= 2
    rows = _rows(combine("crosstab", ["a", "b"], [a, _crosstab("B", SMALL_B)]))
    for key in hidden_at_a:
        assert rows[key]["suppressed"] and rows[key]["count"] is None
        assert rows[key]["suppression_reason"] == REASON_AT_SITE


def _attack_bounds(
    a: SiteTable, b: SiteTable, pooled_rows: dict[tuple[Any, ...], dict[str, Any]], target: tuple[str, str]
) -> tuple[float, float]:
    """The range of A's true count in `target` that an attacker holding A's, B's and the pooled table
    can prove, by linear programming over A's unknown inner cells (B's are unknown too where hidden)."""
    cells = sorted(SMALL_A)
    index = {k: i for i, k in enumerate(cells)}
    n = len(cells)
    a_rows = {(r["a"], r["b"], r["margin"]): r for r in a.rows}
    b_rows = {(r["a"], r["b"], r["margin"]): r for r in b.rows}
    eq_rows: list[np.ndarray] = []
    eq_vals: list[float] = []

    def members(key: tuple[Any, ...]) -> list[int]:
        row_level, col_level, margin = key

        def inside(c: tuple[str, str]) -> bool:
            if margin is None:
                return c == (row_level, col_level)
            if margin == "row":
                return c[0] == row_level
            if margin == "column":
                return c[1] == col_level
            return True  # the grand total

        return [index[c] for c in cells if inside(c)]

    def add(site_offset: int, key: tuple[Any, ...], value: float) -> None:
        row = np.zeros(2 * n)
        for i in members(key):
            row[site_offset + i] = 1
        eq_rows.append(row)
        eq_vals.append(value)

    for key, row in a_rows.items():
        if not row["suppressed"]:
            add(0, key, row["count"])
    for key, row in b_rows.items():
        if not row["suppressed"]:
            add(n, key, row["count"])
    for key, row in pooled_rows.items():
        if not row["suppressed"]:
            both = np.zeros(2 * n)
            for i in members(key):
                both[i] = both[n + i] = 1
            eq_rows.append(both)
            eq_vals.append(row["count"])
    objective = np.zeros(2 * n)
    objective[index[target]] = 1
    bounds = [(0, None)] * (2 * n)
    low = linprog(objective, A_eq=np.array(eq_rows), b_eq=eq_vals, bounds=bounds)
    high = linprog(-objective, A_eq=np.array(eq_rows), b_eq=eq_vals, bounds=bounds)
    assert low.status == 0 and high.status == 0
    return float(low.fun), float(-high.fun)


def test_attack_pooled_table_does_not_pin_a_cell_a_site_hid() -> None:
    a, b = _crosstab("A", SMALL_A), _crosstab("B", SMALL_B)
    pooled = _rows(combine("crosstab", ["a", "b"], [a, b]))
    for key, row in {(r["a"], r["b"], r["margin"]): r for r in a.rows}.items():
        if row["suppressed"] and key[2] is None:
            low, high = _attack_bounds(a, b, pooled, (key[0], key[1]))
            assert high - low >= 1, f"{key} is pinned by the pooled table"
    # The attack is real: a pool that released the hidden cell's pooled total would pin A's 3.
    leaky = dict(pooled)
    leaky[("x", "p", None)] = {"suppressed": False, "count": SMALL_A[("x", "p")] + SMALL_B[("x", "p")]}
    low, high = _attack_bounds(a, b, leaky, ("x", "p"))
    assert low == pytest.approx(high) == pytest.approx(3)


def test_pooled_counts_below_the_strictest_minimum_are_hidden() -> None:
    lax = DisclosureRules(min_cell_count=5, keep_zero_cells=True)
    a = _crosstab("A", {("x", "p"): 6, ("x", "q"): 30, ("y", "p"): 40, ("y", "q"): 50}, lax)
    b = _crosstab(
        "B",
        {("x", "p"): 0, ("x", "q"): 20, ("y", "p"): 30, ("y", "q"): 40},
        DisclosureRules(min_cell_count=10, keep_zero_cells=True),
    )
    pooled = combine("crosstab", ["a", "b"], [a, b])
    assert pooled.min_cell_count == 10
    cell = _rows(pooled)[("x", "p", None)]
    assert cell["suppressed"] and cell["suppression_reason"] == REASON_POOLED_MIN


def test_summaries_pool_exactly_from_sufficient_statistics() -> None:
    rng = np.random.default_rng(5)
    parts = [rng.normal(50, 10, size) for size in (120, 340, 75)]
    tables = []
    for i, values in enumerate(parts):
        frame = pd.DataFrame({"n": [len(values)], "sum": [values.sum()], "sum_sq": [(values**2).sum()]})
        table = protect_summary(frame, [], RULES)
        body = {"kind": "summary", "columns": list(table.frame.columns), **table.to_dict()}
        tables.append(SiteTable.from_body(f"S{i}", body, "summary", []))
    (row,) = combine("summary", [], tables).rows
    everything = np.concatenate(parts)
    assert row["n"] == len(everything)
    assert row["mean"] == pytest.approx(everything.mean(), rel=1e-12)
    assert row["variance"] == pytest.approx(everything.var(ddof=1), rel=1e-10)


def _body(rows: list[dict[str, Any]], minimum: int = 10) -> dict[str, Any]:
    return {
        "kind": "count",
        "columns": ["count", "suppressed", "margin"],
        "rows": rows,
        "disclosure": {"min_cell_count": minimum, "round_to": 1},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "not a released"),
        ({"kind": "summary"}, "not a released"),
        ({"kind": "count"}, "lacks rows"),
        (_body([{"count": 3, "suppressed": False, "margin": "total"}]), "below the site's own"),
        (_body([{"count": 30, "suppressed": True, "margin": "total"}]), "carries a value"),
        (_body([{"count": -1, "suppressed": False, "margin": "total"}]), "non-negative"),
        (_body([{"count": 12.5, "suppressed": False, "margin": "total"}]), "non-negative"),
        (_body([{"count": 30, "suppressed": "no", "margin": "total"}]), "suppressed flag"),
        (_body([], minimum=0), "min_cell_count"),
    ],
)
def test_an_answer_breaking_its_own_rules_is_invalid(body: Any, message: str) -> None:
    with pytest.raises(InvalidSiteAnswer, match=message):
        SiteTable.from_body("S", body, "count", [])


def test_nothing_to_pool() -> None:
    with pytest.raises(CombineError):
        combine("count", [], [])


def test_values_no_pooling_can_sum_are_invalid_not_errors() -> None:
    summary = {
        "kind": "summary", "columns": ["sex", "n", "sum", "sum_sq", "suppressed"],
        "disclosure": {"min_cell_count": 10, "round_to": 1},
    }  # fmt: skip
    huge = {**summary, "rows": [{"sex": "F", "n": 20, "sum": 10**400, "sum_sq": 1.0, "suppressed": False}]}
    with pytest.raises(InvalidSiteAnswer, match="not a finite number"):
        SiteTable.from_body("S", huge, "summary", ["sex"])
    listed = {**summary, "rows": [{"sex": ["F"], "n": 20, "sum": 1.0, "sum_sq": 1.0, "suppressed": False}]}
    with pytest.raises(InvalidSiteAnswer, match="not a single text, number or flag"):
        SiteTable.from_body("S", listed, "summary", ["sex"])
    # Values the pooled answer's hash (RFC 8785) cannot hold, in a group, a margin or a column of its own.
    long_label = {"sex": "F" * 310, "n": 20, "sum": 1.0, "sum_sq": 1.0, "suppressed": False}
    assert SiteTable.from_body("S", {**summary, "rows": [long_label]}, "summary", ["sex"]).rows == [
        long_label
    ]
    for odd in (
        {"sex": 2**53},
        {"sex": float("inf")},
        {"sex": "\ud800"},
        {"margin": [1]},
        {"extra": [1e301]},
    ):
        row = {"sex": "F", "n": 20, "sum": 1.0, "sum_sq": 1.0, "suppressed": False, **odd}
        with pytest.raises(InvalidSiteAnswer, match="not a single text, number or flag"):
            SiteTable.from_body("S", {**summary, "rows": [row]}, "summary", ["sex"])
    too_many = _body([{"count": 2**60, "suppressed": False, "margin": "total"}])
    with pytest.raises(InvalidSiteAnswer, match="below 2\\^53"):
        SiteTable.from_body("S", too_many, "count", [])


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    columns = ["n", "mean", "variance", "sum", "sum_sq", "suppressed", "suppression_reason"]
    full = [{"suppressed": False, "suppression_reason": None, **r} for r in rows]
    return {"kind": "summary", "columns": columns, "rows": full,
            "disclosure": {"min_cell_count": 5, "round_to": 1}}  # fmt: skip


# Site answers within every bound a site's answer must keep (numbers up to 1e300), whose pool is not.
BEYOND_A_DOUBLE = {
    # Centred squares (±1e200)² beyond a double.
    "opposite means": [
        {"n": 10, "mean": 1e200, "variance": 1.0, "sum": 1e201, "sum_sq": 1.0},
        {"n": 10, "mean": -1e200, "variance": 1.0, "sum": -1e201, "sum_sq": 1.0},
    ],
    # n·mean beyond a double at both signs: the weighted sum meets +inf and -inf.
    "huge weighted means": [
        {"n": 2**52, "mean": 1e300, "variance": 1.0, "sum": 1e300, "sum_sq": 1.0},
        {"n": 2**52, "mean": -1e300, "variance": 1.0, "sum": -1e300, "sum_sq": 1.0},
    ],
    # A row without moments, centred from its sums: (1e300)² is no double (not a spread of 0).
    "sum squared": [{"n": 20, "sum": 1e300, "sum_sq": 1.0}],
}


@pytest.mark.parametrize("rows", BEYOND_A_DOUBLE.values(), ids=BEYOND_A_DOUBLE.keys())
def test_a_pool_beyond_a_double_is_refused_as_such_never_an_arithmetic_error(
    rows: list[dict[str, Any]],
) -> None:
    tables = []
    for i, row in enumerate(rows):
        body = _summary([row])
        if "mean" not in row:
            body["columns"] = [c for c in body["columns"] if c not in ("mean", "variance")]
        tables.append(SiteTable.from_body(f"S{i}", body, "summary", []))
    with pytest.raises(CombineError, match="beyond what a number can hold"):
        combine("summary", [], tables)


class _Runtime:
    """What Coordinator.run asks of its site: an id and an audit log to append to."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(site_id="hub")
        self.records: list[tuple[str, dict[str, Any]]] = []

    async def record(self, event: str, fields: dict[str, Any], **_: Any) -> None:
        self.records.append((event, fields))


SPEC = parse_query_spec(
    {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]},
     "kind": "summary", "params": {"column": "bmi"}}
)  # fmt: skip


def _coordinate(
    answers: dict[str, dict[str, Any]], runtime: _Runtime | None = None
) -> tuple[dict[str, Any], _Runtime]:
    """Run a federated summary whose peers answered `answers`: the researcher's body and the audit log."""
    runtime = runtime or _Runtime()
    link = SimpleNamespace(peers=dict.fromkeys(answers), signer=object())
    coordinator = Coordinator(runtime, link)  # type: ignore[arg-type]

    async def ask_all(*_: Any, **__: Any) -> list[SiteOutcome]:
        outcomes = [SiteOutcome(site, "answered", body=body) for site, body in answers.items()]
        coordinator.legs.extend((1, o) for o in outcomes)
        return outcomes

    coordinator._ask_all = ask_all  # type: ignore[method-assign]
    body = asyncio.run(coordinator.run(None, "token", SPEC, list(answers), 5.0))  # type: ignore[arg-type]
    return body, runtime


def test_a_coordinator_whose_sites_answers_pool_beyond_a_double_answers_with_every_status() -> None:
    rows = BEYOND_A_DOUBLE["opposite means"]
    body, runtime = _coordinate({"site-a": _summary([rows[0]]), "site-b": _summary([rows[1]])})
    assert [(s["site"], s["status"]) for s in body["sites"]] == [
        ("site-a", "answered"),
        ("site-b", "answered"),
    ]
    assert body["rows"] == []
    assert any("could not be pooled" in r and "beyond" in r for r in body["disclosure"]["reasons"])
    assert [event for event, _ in runtime.records] == ["federation.received", "federation.released"]


def test_any_other_failure_while_pooling_is_an_audited_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("no pooling today")

    monkeypatch.setattr(coordinator_module, "combine", broken)
    runtime = _Runtime()
    answer = _summary([{"n": 10, "mean": 1.0, "variance": 1.0, "sum": 10.0, "sum_sq": 1.0}])
    with pytest.raises(Refusal) as refused:
        _coordinate({"site-a": answer}, runtime)
    assert refused.value.audited and refused.value.stage == "federate"
    assert refused.value.kind == "unavailable"
    event, fields = runtime.records[-1]
    assert event == "federation.refused"
    assert fields["legs"] == [{"site": "site-a", "round": 1, "status": "answered", "request_id": None}]
