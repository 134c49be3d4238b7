"""Federated quantiles: the true pooled quantile always lies in the bracket, which is narrow when bins are
released, and suppressed or rounded bins widen it without ever falsifying it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.federation.combine import SiteTable
from gateway.federation.quantiles import BINS, SiteQuantiles, bracket, plan_edges, pool_quantiles
from pseudonymize.disclosure import DisclosureRules, protect_histogram, protect_quantiles
from pseudonymize.disclosure.levels import OTHER, recode_rare_levels, withhold_merged_quantiles

PROBS = [0.05, 0.25, 0.5, 0.75, 0.95]
NAMES = [f"q{p:g}" for p in PROBS]


def _round1(site: str, values: np.ndarray, round_to: int = 1) -> SiteQuantiles:
    row: dict[str, Any] = {"n": DisclosureRules(10, round_to).round(len(values))}
    row.update({name: float(np.quantile(values, p)) for name, p in zip(NAMES, PROBS, strict=True)})
    body = {"kind": "quantiles", "rows": [row], "disclosure": {"round_to": round_to}}
    return SiteQuantiles.from_body(site, body, [], NAMES)


def _histogram(site: str, values: np.ndarray, edges: list[float], rules: DisclosureRules) -> SiteTable:
    bins = np.searchsorted(edges, values, side="left")  # bin i is (e(i-1), e(i)], as a site bins
    counts = np.bincount(bins, minlength=len(edges) + 1)
    frame = pd.DataFrame({"bin": range(len(edges) + 1), "n": counts})
    table = protect_histogram(
        frame, ["bin"], rules, count_col="n", levels={"bin": list(range(len(edges) + 1))}
    )
    body = {"kind": "histogram", "columns": list(table.frame.columns), **table.to_dict()}
    return SiteTable.from_body(site, body, "histogram", [])


def _pool(parts: list[np.ndarray], rules: DisclosureRules) -> dict[str, Any]:
    round1 = [_round1(f"S{i}", v, rules.round_to) for i, v in enumerate(parts)]
    edges = plan_edges(round1, NAMES[0], NAMES[-1])
    assert len(edges) == BINS + 1
    histograms = {f"S{i}": _histogram(f"S{i}", v, edges, rules) for i, v in enumerate(parts)}
    (row,) = pool_quantiles(round1, histograms, [], PROBS, NAMES, edges).rows
    return row


def _check(row: dict[str, Any], parts: list[np.ndarray], *, bounded: bool = True) -> None:
    everything = np.concatenate(parts)
    for p, name in zip(PROBS, NAMES, strict=True):
        truth = float(np.quantile(everything, p))
        lower, upper = row[f"{name}_lower"], row[f"{name}_upper"]
        if bounded:
            assert lower is not None and upper is not None
        # None is an open end: unbounded on that side, and then there is no estimate.
        assert (lower if lower is not None else -np.inf) - 1e-9 <= truth
        assert truth <= (upper if upper is not None else np.inf) + 1e-9
        if lower is None or upper is None:
            assert row[name] is None
        else:
            assert abs(row[name] - truth) <= upper - lower + 1e-9


def test_released_bins_give_a_bracket_of_at_most_two_bins() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.normal(50, 8, 20_000), rng.normal(55, 5, 30_000), rng.gamma(9, 6, 25_000)]
    row = _pool(parts, DisclosureRules(1))  # no suppression: the documented bound
    _check(row, parts)
    for name in NAMES:
        assert row[f"{name}_upper"] - row[f"{name}_lower"] <= 2 * row["bin_width"] + 1e-9
        # The interpolated estimate is much closer than the bracket on smooth data.
        assert abs(row[name] - np.quantile(np.concatenate(parts), float(name[1:]))) <= row["bin_width"]


def test_suppressed_and_rounded_bins_widen_but_never_falsify() -> None:
    rng = np.random.default_rng(2)
    parts = [rng.normal(50, 8, 600), rng.exponential(10, 900) + 30, rng.normal(70, 3, 400)]
    row = _pool(parts, DisclosureRules(10, round_to=5))
    _check(row, parts)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(30, 400), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    minimum=st.sampled_from([1, 5, 10]),
    round_to=st.sampled_from([1, 1, 5]),
    discrete=st.booleans(),
)
def test_the_bracket_always_holds_the_truth(
    sizes: list[int], seed: int, minimum: int, round_to: int, discrete: bool
) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.lognormal(3, 0.6, n) for n in sizes]
    if discrete:  # ties and gaps: many values share one point
        parts = [np.round(v) for v in parts]
    _check(_pool(parts, DisclosureRules(minimum, round_to)), parts, bounded=False)


def test_no_site_quantiles_plan_no_edges() -> None:
    body = {"kind": "quantiles", "rows": [{"n": None, **dict.fromkeys(NAMES)}], "disclosure": {"round_to": 1}}
    assert plan_edges([SiteQuantiles.from_body("S", body, [], NAMES)], NAMES[0], NAMES[-1]) == []


def test_a_group_hidden_at_a_site_stays_hidden() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 500), rng.normal(0, 1, 500)
    hidden = {
        "kind": "quantiles",
        "rows": [{"n": None, **dict.fromkeys(NAMES)}],
        "disclosure": {"round_to": 1},
    }
    round1 = [_round1("A", a), SiteQuantiles.from_body("B", hidden, [], NAMES)]
    edges = plan_edges(round1, NAMES[0], NAMES[-1])
    rules = DisclosureRules(10)
    pooled = pool_quantiles(
        round1,
        {"A": _histogram("A", a, edges, rules), "B": _histogram("B", b, edges, rules)},
        [],
        PROBS,
        NAMES,
        edges,
    )
    (row,) = pooled.rows
    assert row["suppressed"] and row["n"] is None and row[NAMES[2]] is None


def test_bracket_of_an_empty_population_is_empty() -> None:
    assert bracket([0.0], [0.0], [0, 0], [1.0], 0, 0, 0.5).estimate is None


@pytest.mark.parametrize("body", [None, {"kind": "count"}, {"kind": "quantiles", "rows": [{"n": 3}]}])
def test_malformed_round_one_answers_are_refused(body: Any) -> None:
    from gateway.federation.combine import InvalidSiteAnswer

    with pytest.raises(InvalidSiteAnswer):
        SiteQuantiles.from_body("S", body, [], NAMES)


def test_edges_span_the_sites_values_at_any_scale() -> None:
    import itertools

    from gateway.federation.quantiles import BINS, SiteQuantiles, plan_edges

    def site(low: float, high: float) -> SiteQuantiles:
        return SiteQuantiles("S", {(): 100}, {(): {"q0.05": low, "q0.95": high}}, 1)

    # Values below 1 fill the bins as any others; equal values, or a span below a float's resolution at
    # their magnitude, get edges that still increase.
    for low, high, filled in ((0.012, 0.049, True), (-5e-9, 5e-9, True), (3.0, 3.0, False),
                              (1e15, 1e15 + 2, False)):  # fmt: skip
        edges = plan_edges([site(low, high)], "q0.05", "q0.95")
        assert len(edges) == BINS + 1 and all(a < b for a, b in itertools.pairwise(edges))
        assert edges[0] <= low and edges[-1] >= high
        inside = sum(1 for a, b in itertools.pairwise(edges) if b > low and a < high)
        assert inside >= BINS // 2 if filled else inside >= 1, (low, high, inside)


def _site_answers(
    site: str, groups: dict[str, np.ndarray], rules: DisclosureRules
) -> tuple[SiteQuantiles, Callable[[list[float]], SiteTable]]:
    """A site's round-1 quantiles by country as its gateway releases them (rare countries merged into
    "(other)", whose quantiles are withheld), and its round-2 histogram over given edges."""
    executed = pd.DataFrame({
        "country": list(groups),
        "n": [len(v) for v in groups.values()],
        **{name: [float(np.quantile(v, p)) for v in groups.values()]
           for name, p in zip(NAMES, PROBS, strict=True)},
    })  # fmt: skip
    merged = recode_rare_levels(executed, ["country"], rules, merge=False)
    table = protect_quantiles(merged, ["country"], rules, value_cols=NAMES, probs=PROBS)
    table = withhold_merged_quantiles(table, ["country"], NAMES, rules)
    round1 = SiteQuantiles.from_body(site, {"kind": "quantiles", **table.to_dict()}, ["country"], NAMES)

    def histogram(edges: list[float]) -> SiteTable:
        bins = {c: np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
                for c, v in groups.items()}  # fmt: skip
        rows = [(c, b, int(n)) for c, counts in bins.items() for b, n in enumerate(counts)]
        frame = recode_rare_levels(
            pd.DataFrame(rows, columns=["country", "bin", "n"]), ["country"], rules, merge=True
        )
        levels = {"bin": list(range(len(edges) + 1))}
        hist = protect_histogram(frame, ["country", "bin"], rules, count_col="n", levels=levels)
        body = {"kind": "histogram", "columns": list(hist.frame.columns), **hist.to_dict()}
        return SiteTable.from_body(site, body, "histogram", ["country"])

    return round1, histogram


def test_an_other_group_whose_quantiles_a_site_withheld_is_pooled_from_its_bins() -> None:
    """A site's "(other)" group shows its n but no quantile (the merged levels' values do not combine): the
    edges are planned from the quantiles shown, and "(other)" is pooled from the bins like any group."""
    rng = np.random.default_rng(5)
    rules = DisclosureRules(10)
    data = {
        "A": {"DE": rng.normal(50, 8, 3000), "LU": rng.normal(58, 4, 6), "BE": rng.normal(57, 4, 8)},
        "B": {"DE": rng.normal(52, 6, 2500), "LU": rng.normal(56, 4, 7), "NL": rng.normal(55, 5, 40)},
    }
    answers = {site: _site_answers(site, groups, rules) for site, groups in data.items()}
    round1 = [first for first, _ in answers.values()]
    assert round1[0].n[(OTHER,)] == 14 and round1[0].values[(OTHER,)] == dict.fromkeys(NAMES)
    assert round1[1].n[(OTHER,)] is None  # B's "(other)" (7 rows) is hidden below the minimum
    edges = plan_edges(round1, NAMES[0], NAMES[-1])
    assert len(edges) == BINS + 1
    histograms = {site: histogram(edges) for site, (_, histogram) in answers.items()}
    pooled = {
        row["country"]: row
        for row in pool_quantiles(round1, histograms, ["country"], PROBS, NAMES, edges).rows
    }
    # A, with an "(other)", does not show NL: NL may be in A's "(other)", so B's NL is pooled there too.
    assert pooled.keys() == {"DE", OTHER}
    assert pooled[OTHER]["suppressed"] and pooled[OTHER]["n"] is None  # a site hid it: hidden in the pool
    assert not pooled["DE"]["suppressed"] and pooled["DE"]["n"] == 5500
    # Small groups' bins, hidden with their complements in the other groups' bins, widen DE's brackets.
    _check(pooled["DE"], [data["A"]["DE"], data["B"]["DE"]], bounded=False)

    # Where every site shows its "(other)", the pooled one comes from their bins, bracketed as any group's.
    data["B"]["CH"] = rng.normal(54, 4, 5)
    answers = {site: _site_answers(site, groups, rules) for site, groups in data.items()}
    round1 = [first for first, _ in answers.values()]
    edges = plan_edges(round1, NAMES[0], NAMES[-1])
    histograms = {site: histogram(edges) for site, (_, histogram) in answers.items()}
    pooled = {
        row["country"]: row
        for row in pool_quantiles(round1, histograms, ["country"], PROBS, NAMES, edges).rows
    }
    assert [first.n[(OTHER,)] for first in round1] == [14, 12]
    assert not pooled[OTHER]["suppressed"] and pooled[OTHER]["n"] == 14 + 12 + 40
    merged = [data["A"]["LU"], data["A"]["BE"], data["B"]["LU"], data["B"]["CH"], data["B"]["NL"]]
    _check(pooled[OTHER], merged, bounded=False)


def _grouped_histogram(site: str, groups: dict[str, list[int]], minimum: int) -> SiteTable:
    columns = ["g", "bin", "count", "suppressed", "suppression_reason"]
    rows = [
        {"g": g, "bin": b, "count": c, "suppressed": False, "suppression_reason": None}
        for g, bins in groups.items()
        for b, c in enumerate(bins)
    ]
    return SiteTable(site, columns, rows, minimum, 1)


def test_a_pooled_group_below_the_strictest_minimum_is_hidden_as_a_pooled_count_is() -> None:
    """Site A (min 5) released 6 rows of `x`, site B (min 10) none: pooled, `x` rests on 6 rows, fewer
    than B's minimum, so it is hidden like the pooled count of the same group; `y` (12 rows) is shown."""
    edges = [float(i) for i in range(11)]
    six, twelve, none = [0] * (len(edges) + 1), [0] * (len(edges) + 1), [0] * (len(edges) + 1)
    six[3], twelve[5] = 6, 12
    round1 = [SiteQuantiles("A", {("x",): 6, ("y",): 12}, {}, 1), SiteQuantiles("B", {("x",): 0}, {}, 1)]
    histograms = {
        "A": _grouped_histogram("A", {"x": six, "y": twelve}, 5),
        "B": _grouped_histogram("B", {"x": none}, 10),
    }
    pooled = pool_quantiles(round1, histograms, ["g"], [0.5], ["q0.5"], edges)
    rows = {row["g"]: row for row in pooled.rows}
    assert rows["x"]["suppressed"] and rows["x"]["n"] is None and rows["x"]["q0.5"] is None
    assert rows["x"]["suppression_reason"] == "below the federation's min_cell_count"
    assert not rows["y"]["suppressed"] and rows["y"]["n"] == 12 and rows["y"]["q0.5"] is not None
    assert pooled.suppressed == 1 and pooled.min_cell_count == 10
