"""Kaplan–Meier: site coarsening passes the cell rule; the pooled curve equals lifelines on real data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_kidney_transplant, load_lung

from gateway.federation.km import KaplanMeierPoolError, pool_kaplan_meier, pool_released_answers, site_frame
from gateway.query import KaplanMeierQuery, QuerySpecError, parse_query_spec
from pseudonymize.disclosure import DisclosureRules
from pseudonymize.disclosure.km_bins import (
    SurvivalNotReleasable,
    SurvivalNotRounded,
    coarsen_survival,
    protect_survival,
)

RULES = DisclosureRules(10)


def site_counts(times: np.ndarray, events: np.ndarray, edges: list[float]) -> pd.DataFrame:
    """What a site's store returns for a kaplan_meier query: rows and events per bin index."""
    bins = np.searchsorted(edges, times, side="left")
    frame = pd.DataFrame({"bin": bins, "n": 1, "events": events.astype(int)})
    return frame.groupby("bin", as_index=False).sum()


def released(
    frame: pd.DataFrame, time: str, event: str, edges: list[float], parts: int
) -> dict[str, pd.DataFrame]:
    shuffled = frame.sample(frac=1, random_state=1)
    chunks = [shuffled.iloc[idx] for idx in np.array_split(np.arange(len(shuffled)), parts)]
    return {
        f"site-{i}": protect_survival(
            edges, site_counts(c[time].to_numpy(), c[event].to_numpy(), edges), RULES
        ).frame
        for i, c in enumerate(chunks)
    }


def lifelines_at(
    frame: pd.DataFrame, time: str, event: str, uppers: np.ndarray
) -> tuple[np.ndarray, pd.DataFrame]:
    position = np.searchsorted(uppers, frame[time].to_numpy(), side="left")
    beyond = position >= len(uppers)
    mapped = np.where(beyond, uppers[-1] + 1, uppers[np.minimum(position, len(uppers) - 1)])
    km = KaplanMeierFitter().fit(mapped, event_observed=np.where(beyond, 0, frame[event]))
    return km.survival_function_at_times(uppers).to_numpy(), km.confidence_interval_.loc[uppers]


@pytest.mark.parametrize(
    ("loader", "time", "event", "edges"),
    [
        (load_lung, "time", "status", [182.0 * i for i in range(1, 6)]),
        (load_kidney_transplant, "time", "death", [365.0 * i for i in range(1, 9)]),
    ],
    ids=["lung", "kidney_transplant"],
)
def test_pooled_curve_equals_lifelines_at_the_released_bins(
    loader: object, time: str, event: str, edges: list[float]
) -> None:
    frame = loader()  # type: ignore[operator]
    sites = released(frame, time, event, edges, parts=2)
    curve = pool_kaplan_meier(sites)
    uppers = curve["upper"].to_numpy()
    expected, ci = lifelines_at(frame, time, event, uppers)
    np.testing.assert_allclose(curve["survival"], expected, rtol=1e-12)
    np.testing.assert_allclose(curve["ci_lower"], ci.iloc[:, 0], rtol=1e-9)
    np.testing.assert_allclose(curve["ci_upper"], ci.iloc[:, 1], rtol=1e-9)
    assert curve["at_risk"].iloc[0] == len(frame)
    # Greenwood's standard error, by hand at the first bin.
    n, d = curve["at_risk"].iloc[0], curve["events"].iloc[0]
    s = 1 - d / n
    assert curve["std_err"].iloc[0] == pytest.approx(s * np.sqrt(d / (n * (n - d))), rel=1e-12)


def test_coarsening_merges_until_every_count_passes() -> None:
    bins = coarsen_survival(100, [5, 6, 20, 3, 3, 2], [1, 10, 10, 2, 2, 1], RULES)
    assert [(b.first, b.last) for b in bins] == [(0, 1), (2, 2)]
    assert bins[0].at_risk == 100 and bins[0].events == 11 and bins[0].censored == 11
    assert bins[1].at_risk == 78 and bins[1].events == 20 and bins[1].censored == 10


def test_a_small_remainder_beyond_the_last_edge_drops_that_bin() -> None:
    # After the second bin 5 rows would remain: computable from the released counts, so not released.
    bins = coarsen_survival(60, [15, 15, 0], [10, 15, 0], RULES)
    assert [(b.first, b.last) for b in bins] == [(0, 0)]


def test_nothing_releasable_is_a_refusal_and_rounding_is_refused() -> None:
    with pytest.raises(SurvivalNotReleasable):
        coarsen_survival(25, [5, 5], [5, 5], RULES)  # 5 would remain beyond the only bin
    counts = pd.DataFrame({"bin": [0, 1], "n": [50, 50], "events": [20, 20]})
    with pytest.raises(SurvivalNotRounded):
        protect_survival([1.0], counts, DisclosureRules(10, round_to=5))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=12), st.integers(0, 60)
)
def test_every_released_count_and_the_remainder_pass(bins: list[tuple[int, int]], beyond: int) -> None:
    events = [d for d, _ in bins]
    censored = [c for _, c in bins]
    total = sum(events) + sum(censored) + beyond
    try:
        released_bins = coarsen_survival(total, events, censored, RULES)
    except SurvivalNotReleasable:
        return
    at_risk = total
    for b in released_bins:
        assert b.at_risk == at_risk
        assert min(b.at_risk, b.events, b.censored) >= 10
        assert b.events == sum(events[b.first : b.last + 1]) and b.censored == sum(
            censored[b.first : b.last + 1]
        )
        at_risk -= b.events + b.censored
    assert at_risk >= 10
    assert released_bins[0].first == 0
    assert all(a.last + 1 == b.first for a, b in itertools.pairwise(released_bins))


def test_pooling_refuses_inconsistent_or_disjoint_tables() -> None:
    good = pd.DataFrame(
        {
            "lower": [None, 10.0],
            "upper": [10.0, 20.0],
            "at_risk": [100, 70],
            "events": [20, 10],
            "censored": [10, 10],
        }
    )
    broken = good.assign(at_risk=[100, 69])
    with pytest.raises(KaplanMeierPoolError, match="do not follow"):
        pool_kaplan_meier({"a": broken})
    other = pd.DataFrame(
        {"lower": [None], "upper": [15.0], "at_risk": [50], "events": [10], "censored": [10]}
    )
    with pytest.raises(KaplanMeierPoolError, match="no common"):
        pool_kaplan_meier({"a": good, "b": other})
    with pytest.raises(KaplanMeierPoolError, match="no survival rows"):
        site_frame({"rows": []})


def test_kaplan_meier_spec_validation() -> None:
    base = {"dataset": "d", "agreement": "A", "purpose": {"duo": ["DUO:0000006"]}, "kind": "kaplan_meier"}
    spec = parse_query_spec({**base, "params": {"time": "t", "event": "e", "edges": [1, 2.5]}})
    assert isinstance(spec, KaplanMeierQuery)
    assert spec.columns_touched() == ("e", "t") and spec.query_facts().kind == "kaplan_meier"
    with pytest.raises(QuerySpecError, match="above 0"):
        parse_query_spec({**base, "params": {"time": "t", "event": "e", "edges": [0, 1]}})
    with pytest.raises(QuerySpecError, match="increase"):
        parse_query_spec({**base, "params": {"time": "t", "event": "e", "edges": [2, 1]}})
    with pytest.raises(QuerySpecError):
        parse_query_spec({**base, "group_by": ["sex"], "params": {"time": "t", "event": "e", "edges": [1]}})


def test_pooled_answers_are_json_rows_that_pass_the_cell_rule() -> None:
    frame = load_kidney_transplant()
    sites = released(frame, "time", "death", [365.0 * i for i in range(1, 9)], parts=2)
    bodies = {
        site: {"rows": table.astype(object).where(table.notna(), None).to_dict("records"),
               "disclosure": {"min_cell_count": 10}}
        for site, table in sites.items()
    }  # fmt: skip
    pooled = pool_released_answers(bodies)
    assert pooled.columns[:5] == ["lower", "upper", "at_risk", "events", "censored"]
    assert pooled.rows[0]["lower"] is None and pooled.min_cell_count == 10
    assert all(row["events"] >= 10 for row in pooled.rows)
    expected = pool_kaplan_meier(sites)
    assert [row["survival"] for row in pooled.rows] == expected["survival"].tolist()


def test_a_count_no_integer_holds_is_a_pool_error_naming_the_site() -> None:
    from gateway.federation.km import check_site_answer

    rows = [{"lower": None, "upper": 90.0, "at_risk": 1e999, "events": 10, "censored": 0}]
    with pytest.raises(KaplanMeierPoolError, match="S: a value is not a single text, number or flag"):
        check_site_answer("S", {"rows": rows, "disclosure": {"min_cell_count": 5}})
    for report in (None, [], {"min_cell_count": "10"}, {"min_cell_count": True}, {"min_cell_count": 0}):
        with pytest.raises(
            KaplanMeierPoolError, match="S: the disclosure report has no valid min_cell_count"
        ):
            check_site_answer("S", {"rows": rows, "disclosure": report})
