"""Released quantiles (gateway.release): rare levels are merged into "(other)" as counts merge them, each
group's n is hidden exactly where a count of the same query hides the cell, and no "(other)" or hidden
group shows a quantile."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from query_helpers import obligations

from gateway.decision.models import Obligations
from gateway.query import QueryOutcome, parse_query_spec
from gateway.release import protect
from pseudonymize.disclosure import DisclosureError
from pseudonymize.disclosure.levels import OTHER

GROUPS = ("country", "outcome")
MEDIAN = "q0.5"


def rules(min_cell_count: int = 10, round_to: int = 1, keep_zero_cells: bool = False) -> Obligations:
    return obligations(GROUPS).model_copy(
        update={"min_cell_count": min_cell_count, "round_to": round_to, "keep_zero_cells": keep_zero_cells}
    )


def spec(kind: str, groups: list[str], probs: list[float] | None = None) -> Any:
    body: dict[str, Any] = {
        "dataset": "cohort",
        "agreement": "DSA-2026-014",
        "purpose": {"duo": ["DUO:0000042"]},
        "kind": kind,
        "group_by": groups,
    }
    if kind == "quantiles":
        body["params"] = {"column": "bmi", "probs": probs or [0.5]}
    return parse_query_spec(body)


def release(kind: str, frame: pd.DataFrame, groups: list[str], obligations: Obligations) -> dict[str, Any]:
    columns = [*groups, "n", *([MEDIAN] if kind == "quantiles" else [])]
    total = int(frame["n"].sum())
    outcome = QueryOutcome(frame[columns].copy(), total, total)
    return protect(spec(kind, groups), outcome, obligations).body


def by_group(body: dict[str, Any], groups: list[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(r[g] for g in groups): r for r in body["rows"] if r.get("margin") is None}


def lone_country() -> pd.DataFrame:
    """The reviewer's cohort: one patient is the only one from LU (and recovered)."""
    rows = [
        ("AT", "recovered", 19, 25.0),
        ("BE", "recovered", 12, 26.0),
        ("CH", "recovered", 19, 24.0),
        ("DE", "died", 455, 27.5),
        ("DE", "readmitted", 294, 26.5),
        ("DE", "recovered", 1885, 25.5),
        ("FR", "recovered", 13, 23.0),
        ("NL", "recovered", 22, 25.0),
        ("LU", "recovered", 1, 41.3),
    ]
    return pd.DataFrame(rows, columns=["country", "outcome", "n", MEDIAN])


def by_country(frame: pd.DataFrame) -> pd.DataFrame:
    """The executor's answer grouped by country alone (each country's median made up as 20 + its n / 100)."""
    sizes = frame.groupby("country", as_index=False).agg(n=("n", "sum"))
    sizes[MEDIAN] = 20 + sizes["n"] / 100
    return sizes


def test_the_rare_group_is_merged_and_hidden_with_the_counts_complement() -> None:
    """Quantiles by country used to drop LU and release BE's 12, which the count hides as a complement:
    the ungrouped n minus the released ones gave LU's single patient and BE back."""
    frame = by_country(lone_country())
    counts = by_group(release("count", frame, ["country"], rules()), ["country"])
    quantiles = release("quantiles", frame, ["country"], rules())
    groups = by_group(quantiles, ["country"])
    assert ("LU",) not in groups and groups.keys() == counts.keys()
    assert groups[(OTHER,)]["suppression_reason"] == "below min_cell_count"
    assert groups[("BE",)]["suppression_reason"] == "complementary"
    for key, group in groups.items():
        assert (group["n"], group["suppressed"]) == (counts[key]["count"], counts[key]["suppressed"])
    assert groups[(OTHER,)][MEDIAN] is None and groups[("BE",)][MEDIAN] is None
    assert groups[("DE",)][MEDIAN] == pytest.approx(20 + 2634 / 100)
    assert 20.01 not in [r[MEDIAN] for r in quantiles["rows"]]


def test_a_finer_grouping_hides_what_the_crosstab_hides() -> None:
    """Within DE and LU, by country and outcome: the LU patient's group is merged and hidden, and so are the
    German groups the crosstab hides, so quantiles by outcome alone no longer tell the patient's outcome."""
    frame = lone_country()
    frame = frame[frame["country"].isin(["DE", "LU"])].reset_index(drop=True)
    keys = list(GROUPS)
    cells = by_group(release("crosstab", frame, keys, rules()), keys)
    groups = by_group(release("quantiles", frame, keys, rules()), keys)
    assert groups.keys() == cells.keys() and len(groups) == 6  # (other) x 3 outcomes, zeros included
    for key, group in groups.items():
        assert (group["n"], group["suppressed"]) == (cells[key]["count"], cells[key]["suppressed"])
        assert group["suppression_reason"] == cells[key]["suppression_reason"]
        assert group[MEDIAN] is None
    assert all(groups[("DE", o)]["suppressed"] for o in ("died", "readmitted", "recovered"))


def test_a_released_other_group_shows_its_size_but_no_quantile_and_says_why() -> None:
    frame = pd.DataFrame({
        "country": ["DE", "FR", "LU", "BE", "NL", "AT"],
        "n": [400, 60, 4, 5, 3, 2],
        MEDIAN: [25.0, 26.0, 40.0, 41.0, 42.0, 43.0],
    })  # fmt: skip
    body = release("quantiles", frame, ["country"], rules())
    groups = by_group(body, ["country"])
    assert set(groups) == {("DE",), ("FR",), (OTHER,)}
    other = groups[(OTHER,)]
    assert (other["n"], other["suppressed"], other[MEDIAN]) == (14, False, None)
    assert groups[("DE",)][MEDIAN] == 25.0 and groups[("FR",)][MEDIAN] == 26.0
    note = "quantiles of 1 (other) group(s) withheld: they merge levels held by fewer than 10 rows each"
    assert any(reason.startswith(note) for reason in body["disclosure"]["reasons"])
    assert body["disclosure"]["suppressed"] == 0


def test_without_rare_levels_quantiles_are_released_as_before() -> None:
    frame = pd.DataFrame({"country": ["DE", "FR", "NL"], "n": [400, 60, 30], MEDIAN: [25.0, 26.0, 24.5]})
    body = release("quantiles", frame, ["country"], rules())
    assert [(r["country"], r["n"], r[MEDIAN]) for r in body["rows"]] == [
        ("DE", 400, 25.0),
        ("FR", 60, 26.0),
        ("NL", 30, 24.5),
    ]
    assert not any("withheld" in reason for reason in body["disclosure"]["reasons"])


@st.composite
def answers(draw: st.DrawFn) -> tuple[pd.DataFrame, list[str], Obligations]:
    """An executor's quantiles answer over one or two group columns (some levels rare), and thresholds."""
    groups = list(GROUPS[: draw(st.integers(1, 2))])
    levels = [[*draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True)), None]
              for _ in groups]  # fmt: skip
    cells = draw(
        st.lists(st.tuples(*(st.sampled_from(lv) for lv in levels)), min_size=1, max_size=10, unique=True)
    )
    rows = [
        (*cell, draw(st.one_of(st.integers(1, 12), st.integers(13, 300))), float(i))
        for i, cell in enumerate(cells)
    ]
    frame = pd.DataFrame(rows, columns=[*groups, "n", MEDIAN])
    thresholds = rules(draw(st.integers(1, 12)), draw(st.sampled_from([1, 5])), draw(st.booleans()))
    return frame, groups, thresholds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers())
def test_group_sizes_are_protected_exactly_as_the_counts_of_the_same_query(
    answer: tuple[pd.DataFrame, list[str], Obligations],
) -> None:
    frame, groups, thresholds = answer
    kind = "count" if len(groups) == 1 else "crosstab"
    try:
        counts = release(kind, frame, groups, thresholds)
    except DisclosureError as refusal:
        with pytest.raises(type(refusal)):
            release("quantiles", frame, groups, thresholds)
        return
    quantiles = release("quantiles", frame, groups, thresholds)
    cells, found = by_group(counts, groups), by_group(quantiles, groups)
    assert found.keys() == cells.keys()
    own = {tuple(row[:-2]): row[-1] for row in frame.itertuples(index=False, name=None)}
    for key, group in found.items():
        cell = cells[key]
        assert (group["n"], group["suppressed"]) == (cell["count"], cell["suppressed"])
        assert group["suppression_reason"] == cell["suppression_reason"]
        if group["suppressed"] or OTHER in key:
            assert group[MEDIAN] is None
        elif group[MEDIAN] is not None:
            assert group[MEDIAN] == own[key]  # a real group's own quantile, never a rare level's
