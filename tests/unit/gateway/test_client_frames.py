"""The client's DataFrames: every result column has one dtype whatever the values, group columns keep theirs.

The bodies are the gateway's own, built by the code that releases them (`gateway.release.protect` at a site,
`gateway.federation` at a coordinator) and sent through JSON as the client receives them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pytest
from obligation_helpers import ONE_CODE_CONSENT, obligations

from gateway.client import result_frame
from gateway.federation.combine import SiteTable, combine
from gateway.federation.km import pool_released_answers
from gateway.federation.quantiles import SiteQuantiles, pool_quantiles
from gateway.query import QueryOutcome, parse_query_spec
from gateway.release import protect

MIN_CELL = 10
OBLIGATIONS = obligations(
    ("sex", "age_band", "admitted", "bmi", "survival_days", "event"), ONE_CODE_CONSENT, MIN_CELL
)

INT, FLOAT, FLAG, TEXT = pd.Int64Dtype(), pd.Float64Dtype(), pd.BooleanDtype(), pd.StringDtype()
GROUP = "object"
SUPPRESSION = {"suppressed": FLAG, "suppression_reason": TEXT}
COUNTS = {"count": INT, **SUPPRESSION, "margin": TEXT}
SUMMARY = {"n": INT, "mean": FLOAT, "variance": FLOAT, "sum": FLOAT, "sum_sq": FLOAT, **SUPPRESSION}
HISTOGRAM = {"bin": INT, "lower": FLOAT, "upper": FLOAT, **COUNTS}
SURVIVAL = {"lower": FLOAT, "upper": FLOAT, "at_risk": INT, "events": INT, "censored": INT}


def released(
    kind: str, executed: Mapping[str, Sequence[Any]], group_by: Sequence[str] = (), **params: Any
) -> dict[str, Any]:
    """A site's answer as the client receives it: the executor's table through disclosure control, as JSON."""
    spec = parse_query_spec(
        {
            "dataset": "cohort",
            "agreement": "DSA-TEST-OPEN",
            "purpose": {"duo": ["DUO:0000006"]},
            "kind": kind,
            "group_by": list(group_by),
            **({"params": params} if params else {}),
        }
    )
    frame = pd.DataFrame(dict(executed))
    selected = int(frame["n"].sum())
    body = protect(spec, QueryOutcome(frame, selected, selected + 1000), OBLIGATIONS).body
    answer: dict[str, Any] = json.loads(json.dumps({"kind": kind, **body}))
    return answer


def dtypes(frame: pd.DataFrame) -> dict[str, Any]:
    return {str(name): (GROUP if dtype == "object" else dtype) for name, dtype in frame.dtypes.items()}


def test_a_summary_whose_groups_are_all_suppressed_keeps_numeric_columns() -> None:
    # Every level has at least 10 rows (no "(other)" merge), every cell fewer: all four groups hidden.
    hidden = released(
        "summary",
        {"sex": ["F", "F", "M", "M"], "age_band": ["20-29", "30-39"] * 2, "n": [6, 6, 6, 6],
         "sum": [150.0, 160.0, 170.0, 180.0], "sum_sq": [4000.0, 4300.0, 4900.0, 5500.0]},
        ["sex", "age_band"], column="bmi",
    )  # fmt: skip
    assert all(row["suppressed"] and row["n"] is None for row in hidden["rows"])
    shown = released(
        "summary",
        {"sex": ["F", "M"], "n": [40, 30], "sum": [1000.0, 800.0], "sum_sq": [26000.0, 22000.0]},
        ["sex"], column="bmi",
    )  # fmt: skip
    assert dtypes(result_frame(hidden)) == {"sex": GROUP, "age_band": GROUP, **SUMMARY}
    assert dtypes(result_frame(shown)) == {"sex": GROUP, **SUMMARY}
    frame = result_frame(hidden)
    assert frame["mean"].isna().all() and frame["suppression_reason"].eq("below min_cell_count").all()


@pytest.mark.parametrize("edges", [[20, 25, 30], [20.5, 25.25, 30.75]], ids=["whole", "fractional"])
def test_histogram_edges_are_floats_whether_whole_or_fractional(edges: list[float]) -> None:
    body = released("histogram", {"bin": [0, 1, 2, 3], "n": [40, 30, 20, 50]}, column="bmi", edges=edges)
    frame = result_frame(body)
    assert dtypes(frame) == HISTOGRAM
    assert frame["lower"].isna().iloc[0] and frame["upper"].isna().iloc[-1]
    assert frame["lower"].iloc[1:].tolist() == [float(e) for e in edges]


def test_count_columns_do_not_depend_on_what_was_suppressed() -> None:
    nothing_hidden = released("count", {"sex": ["F", "M"], "n": [40, 30]}, ["sex"])
    some_hidden = released(
        "crosstab",
        {"sex": ["F", "F", "M", "M"], "age_band": ["20-29", "30-39"] * 2, "n": [40, 3, 30, 20]},
        ["sex", "age_band"],
    )
    ungrouped = released("count", {"n": [70]})
    assert not any(row["suppression_reason"] for row in nothing_hidden["rows"])
    assert any(row["suppression_reason"] for row in some_hidden["rows"])
    assert dtypes(result_frame(nothing_hidden)) == {"sex": GROUP, **COUNTS}
    assert dtypes(result_frame(some_hidden)) == {"sex": GROUP, "age_band": GROUP, **COUNTS}
    frame = result_frame(ungrouped)
    assert dtypes(frame) == COUNTS and frame["margin"].isna().all()


def test_group_columns_keep_their_values() -> None:
    # Numbers, text, dates (ISO text in JSON), the merged "(other)" level, and None where a margin sums.
    numbers = released("count", {"age": [30, 40, 50], "n": [40, 30, 3]}, ["age"])
    dates = released("count", {"admitted": ["2024-01-01", "2024-02-01"], "n": [40, 30]}, ["admitted"])
    for body in (numbers, dates):
        frame = result_frame(body)
        column = body["columns"][0]
        assert frame[column].dtype == object
        assert frame[column].tolist() == [row[column] for row in body["rows"]]
    assert "(other)" in result_frame(numbers)["age"].tolist()
    assert result_frame(numbers)["age"].iloc[-1] is None  # the total's row


def test_quantiles_are_floats_and_n_an_integer() -> None:
    body = released("quantiles", {"sex": ["F", "M"], "n": [40, 30], "q0.5": [24.0, 26.5]}, ["sex"],
                    column="bmi", probs=[0.5])  # fmt: skip
    assert dtypes(result_frame(body)) == {"sex": GROUP, "n": INT, "q0.5": FLOAT, **SUPPRESSION}


def test_kaplan_meier_counts_are_integers_and_edges_floats() -> None:
    executed = {"bin": [0, 1, 2], "n": [40, 30, 200], "events": [15, 12, 0]}
    body = released("kaplan_meier", executed, time="survival_days", event="event", edges=[90, 180])
    assert dtypes(result_frame(body)) == SURVIVAL
    pooled = pool_released_answers({"site-de": body, "site-fr": body})
    curve = {"kind": "kaplan_meier", "columns": pooled.columns, "rows": json.loads(json.dumps(pooled.rows))}
    extra = {"survival": FLOAT, "std_err": FLOAT, "ci_lower": FLOAT, "ci_upper": FLOAT}
    assert dtypes(result_frame(curve)) == {**SURVIVAL, **extra}


def test_pooled_answers_keep_the_same_types() -> None:
    site = released(
        "summary",
        {"sex": ["F", "F", "M", "M"], "age_band": ["20-29", "30-39"] * 2, "n": [6, 6, 6, 6],
         "sum": [150.0, 160.0, 170.0, 180.0], "sum_sq": [4000.0, 4300.0, 4900.0, 5500.0]},
        ["sex", "age_band"], column="bmi",
    )  # fmt: skip
    groups = ["sex", "age_band"]
    pooled = combine("summary", groups, [SiteTable.from_body(s, site, "summary", groups) for s in "AB"])
    body = {"kind": "summary", "columns": pooled.columns, "rows": json.loads(json.dumps(pooled.rows))}
    assert dtypes(result_frame(body)) == {"sex": GROUP, "age_band": GROUP, **SUMMARY}
    # Federated quantiles add a bracket per quantile and the bins' width; here a site hid the only group.
    hidden = SiteQuantiles("A", {(): None}, {(): {"q0.5": None}}, 1)
    histogram = SiteTable("A", [*HISTOGRAM], [], MIN_CELL, 1)
    table = pool_quantiles([hidden], {"A": histogram}, [], [0.5], ["q0.5"], [20.0, 30.0])
    body = {"kind": "quantiles", "columns": table.columns, "rows": json.loads(json.dumps(table.rows))}
    bracket = {"q0.5": FLOAT, "q0.5_lower": FLOAT, "q0.5_upper": FLOAT, "bin_width": FLOAT}
    assert dtypes(result_frame(body)) == {"n": INT, **bracket, **SUPPRESSION}


def test_an_empty_answer_has_typed_columns() -> None:
    body = {"kind": "summary", "columns": ["sex", *SUMMARY], "rows": []}
    assert dtypes(result_frame(body)) == {"sex": GROUP, **SUMMARY}
    assert result_frame({"kind": "count", "columns": [], "rows": []}).empty
