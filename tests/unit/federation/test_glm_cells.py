"""GLM joint cells and few-valued columns: the second moments a session's sums release, with the attacks."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from obligation_helpers import ONE_CODE_CONSENT, obligations

from gateway.federation.glm_site import (
    CategoricalCovariate,
    GlmArrays,
    GlmModel,
    category_columns,
    check_release,
    design,
    iteration_statistics,
    value_counts,
)
from pseudonymize.disclosure import DisclosureRules
from pseudonymize.disclosure.glm_checks import (
    CategoryColumn,
    GlmDisclosureError,
    _counts_by_pair,
    _counts_by_product,
    check_glm_joint_cells,
    check_glm_value_counts,
    joint_counts,
)

RULES = DisclosureRules(10)
OBLIGATIONS = obligations(("event", "bmi", "icd10", "smoking"), ONE_CODE_CONSENT)
ICD10 = CategoricalCovariate(column="icd10", levels=["I10", "G30.9"])
SMOKING = CategoricalCovariate(column="smoking", levels=["never", "former", "current"])
ATTACKED = GlmModel(outcome="event", family="binomial", numeric=["bmi"], categorical=[ICD10, SMOKING])


def cohort(blocks: dict[tuple[str, str], int]) -> pd.DataFrame:
    """Rows per (icd10, smoking) block; every other row an event, a BMI each, a pseudonym each."""
    pairs = [pair for pair, size in blocks.items() for _ in range(size)]
    n = len(pairs)
    return pd.DataFrame(
        {
            "icd10": [icd for icd, _ in pairs],
            "smoking": [smoking for _, smoking in pairs],
            "event": np.arange(n) % 2,
            "bmi": np.random.default_rng(1).normal(27, 4, n).round(1),
            "patient": [f"p{i}" for i in range(n)],
        }
    )


# One patient has G30.9 and smokes; every level, its complement and the outcome hold at least 10 rows.
LONE = {
    ("I10", "never"): 40, ("I10", "former"): 30, ("I10", "current"): 29,
    ("G30.9", "never"): 10, ("G30.9", "former"): 10, ("G30.9", "current"): 1,
}  # fmt: skip


def reason(data: GlmArrays, model: GlmModel) -> str:
    with pytest.raises(GlmDisclosureError) as refused:
        check_release(data, model, OBLIGATIONS)
    return refused.value.reason


def no_count(text: str) -> bool:
    """No number but the threshold, once the request's own paths and levels are taken out."""
    rest = re.sub(r"model\.\w+(\[\d+\])?(=[^\s,:]+)?", "", text).replace("fewer than 10 rows", "")
    return not re.search(r"\d", rest)


def test_the_information_matrix_of_two_dummies_is_their_joint_cell_and_is_refused() -> None:
    """The attack: at β = 0 XᵀWX[G30.9, current] / ¼ is the patients with both, here one; with β on bmi
    alone it is that patient's weight μ(1 − μ), which gives back their bmi. The site's crosstab of icd10 ×
    smoking suppresses that cell, so the session may not release it either."""
    frame = cohort(LONE)
    data = design(frame, ATTACKED)
    names = ATTACKED.parameter_names()
    i, j = names.index("icd10[G30.9]"), names.index("smoking[current]")
    at_zero = iteration_statistics(data, np.zeros(len(names)), "binomial")
    assert at_zero.xtwx[i, j] / 0.25 == pytest.approx(1.0)
    beta = np.zeros(len(names))
    beta[names.index("bmi")] = 0.02
    weight = iteration_statistics(data, beta, "binomial").xtwx[i, j]
    mu = (1 + math.sqrt(1 - 4 * weight)) / 2
    lone = frame[(frame["icd10"] == "G30.9") & (frame["smoking"] == "current")]["bmi"].item()
    assert math.log(mu / (1 - mu)) / 0.02 == pytest.approx(lone)
    # Every single-column check passes; the joint cell does not.
    text = reason(data, ATTACKED)
    assert "model.categorical[0]=G30.9 with model.categorical[1]=current" in text
    assert "min_cell_count" in text and no_count(text) and str(lone) not in text


def test_the_ordinary_gaussian_fit_holds_the_same_cell_and_is_refused() -> None:
    model = GlmModel(outcome="bmi", family="gaussian", categorical=[ICD10, SMOKING])
    data = design(cohort(LONE), model)
    names = model.parameter_names()
    xtx = iteration_statistics(data, np.zeros(len(names)), "gaussian").xtwx
    assert xtx[names.index("icd10[G30.9]"), names.index("smoking[current]")] == 1
    assert "model.categorical[0]=G30.9 with model.categorical[1]=current" in reason(data, model)


def test_joint_tables_whose_cells_are_empty_or_large_pass() -> None:
    # No patient with G30.9 smokes: an empty cell is no patient's, and passes.
    empty = {**LONE, ("G30.9", "never"): 11, ("G30.9", "current"): 0}
    check_release(design(cohort(empty), ATTACKED), ATTACKED, OBLIGATIONS)
    large = {**LONE, ("G30.9", "current"): 10}
    check_release(design(cohort(large), ATTACKED), ATTACKED, OBLIGATIONS)


def test_two_levels_of_one_column_share_no_row_and_pass() -> None:
    # smoking[former] × smoking[current] is 0 by construction: only tables of two columns count.
    model = GlmModel(outcome="event", family="binomial", numeric=["bmi"], categorical=[SMOKING])
    check_release(design(cohort(LONE), model), model, OBLIGATIONS)


def grades(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> pd.DataFrame:
    """(non-events, events) per grade."""
    rows = [(g, y) for g, (no, yes) in zip("abc", (a, b, c), strict=True) for y in [0] * no + [1] * yes]
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        {"grade": [g for g, _ in rows], "y": [y for _, y in rows], "x": rng.normal(size=len(rows))}
    )


def test_a_binomial_outcome_with_a_dummy_is_a_joint_table() -> None:
    """XᵀWz at β = 0 is Σ x(y − ½): with the dummy's count on the diagonal, its events."""
    model = GlmModel(
        outcome="y", family="binomial", numeric=["x"],
        categorical=[CategoricalCovariate(column="grade", levels=["a", "b"])],
    )  # fmt: skip
    data = design(grades((30, 30), (12, 3), (0, 0)), model)
    stats = iteration_statistics(data, np.zeros(3), "binomial")
    assert stats.xtwz[2] + 0.5 * stats.xtwx[2, 2] / 0.25 == pytest.approx(3)
    text = reason(data, model)
    assert "model.categorical[0]=b with model.outcome=1" in text and no_count(text)


def test_a_reference_levels_cell_follows_from_the_others_and_is_refused() -> None:
    """Grade a is the reference: no dummy is a, yet its events are Σ(y − ½) less the dummies' shares.
    Each dummy's own 2×2 table with the outcome passes; the reference's does not."""
    model = GlmModel(
        outcome="y", family="binomial", numeric=["x"],
        categorical=[CategoricalCovariate(column="grade", levels=["a", "b", "c"])],
    )  # fmt: skip
    frame = grades((8, 4), (20, 20), (20, 20))
    for level in "bc":
        assert (pd.crosstab(frame["grade"] == level, frame["y"]).to_numpy() >= 10).all()
    data = design(frame, model)
    stats = iteration_statistics(data, np.zeros(4), "binomial")
    reference_rows = stats.n - (stats.xtwx[2, 2] + stats.xtwx[3, 3]) / 0.25
    events = stats.xtwz[0] - stats.xtwz[2] - stats.xtwz[3] + 0.5 * reference_rows
    assert events == pytest.approx(4)
    assert "model.categorical[0]=a with model.outcome=1" in reason(data, model)


def test_a_two_valued_numeric_column_is_a_category_named_without_its_values() -> None:
    frame = pd.DataFrame(
        {
            "y": np.linspace(0, 1, 60),
            "dose": [7.5] * 2 + [0.0] * 28 + [7.5] * 15 + [0.0] * 15,
            "sex": ["F"] * 30 + ["M"] * 30,
        }
    )
    model = GlmModel(
        outcome="y", family="gaussian", numeric=["dose"],
        categorical=[CategoricalCovariate(column="sex", levels=["M", "F"])],
    )  # fmt: skip
    data = design(frame, model)
    assert iteration_statistics(data, np.zeros(3), "gaussian").xtwx[1, 2] == 2 * 7.5
    text = reason(data, model)
    assert "model.categorical[0]=F with model.numeric[0] (higher value)" in text
    assert "7.5" not in text and no_count(text)


def test_a_two_valued_gaussian_outcome_is_a_category() -> None:
    """XᵀWz at β = 0 is Σ x·y: for a 0/1 outcome, each dummy's rows with y = 1."""
    frame = grades((30, 30), (12, 3), (0, 0))
    model = GlmModel(
        outcome="y", family="gaussian", numeric=["x"],
        categorical=[CategoricalCovariate(column="grade", levels=["a", "b"])],
    )  # fmt: skip
    data = design(frame, model)
    assert iteration_statistics(data, np.zeros(3), "gaussian").xtwz[2] == 3
    assert "model.categorical[0]=b with model.outcome (higher value)" in reason(data, model)


def three_valued(counts: tuple[int, int, int]) -> pd.DataFrame:
    x = np.repeat([0.0, 1.0, 2.0], counts)
    return pd.DataFrame({"y": np.random.default_rng(3).normal(size=len(x)), "children": x})


def test_a_three_valued_numeric_columns_counts_follow_from_its_moments_and_a_rare_one_is_refused() -> None:
    """n, Σx and Σx² (XᵀX at β = 0) are three equations in the three values' counts."""
    model = GlmModel(outcome="y", family="gaussian", numeric=["children"])
    data = design(three_valued((50, 45, 5)), model)
    xtx = iteration_statistics(data, np.zeros(2), "gaussian").xtwx
    vandermonde = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0, 4.0]])
    counts = np.linalg.solve(vandermonde, [xtx[0, 0], xtx[0, 1], xtx[1, 1]])
    np.testing.assert_allclose(counts, [50, 45, 5])
    assert value_counts(data, model) == {"model.numeric[0]": [50, 45, 5]}
    text = reason(data, model)
    assert text.startswith("model.numeric[0]: a column with at most three values") and no_count(text)
    check_release(design(three_valued((50, 40, 10)), model), model, OBLIGATIONS)


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_a_three_valued_outcome_with_a_rare_value_is_refused(family: str) -> None:
    frame = three_valued((3, 50, 47)).rename(columns={"y": "x", "children": "y"})
    model = GlmModel(outcome="y", family=family, numeric=["x"])  # type: ignore[arg-type]
    assert reason(design(frame, model), model).startswith("model.outcome: a column with at most three")


def test_a_withdrawal_that_leaves_a_joint_cell_small_refuses_the_next_iteration() -> None:
    """The sessions re-run check_release on the rows left after withdrawals, before every iteration."""
    frame = cohort({**LONE, ("G30.9", "current"): 10})
    data = design(frame, ATTACKED, "patient")
    check_release(data, ATTACKED, OBLIGATIONS)
    lone = frame[(frame["icd10"] == "G30.9") & (frame["smoking"] == "current")]["patient"].iloc[0]
    assert "G30.9 with model.categorical[1]=current" in reason(data.without({lone}), ATTACKED)


@pytest.mark.parametrize("way", [_counts_by_pair, _counts_by_product])
def test_both_ways_of_counting_joint_cells_give_every_crosstab_exactly(way: Any) -> None:
    rng = np.random.default_rng(4)
    a, b, c = rng.integers(0, 2, 200_000), rng.integers(0, 3, 200_000), rng.integers(0, 2, 200_000)
    columns = [
        CategoryColumn(("a0", "a1"), a),
        CategoryColumn(("b0", "b1", "b2"), b),
        CategoryColumn(("c0", "c1"), c),
    ]
    counts = way(columns, np.array([0, 2, 5, 7]))
    np.testing.assert_array_equal(counts[0:2, 2:5], pd.crosstab(a, b).to_numpy())
    np.testing.assert_array_equal(counts[2:5, 5:7], pd.crosstab(b, c).to_numpy())
    np.testing.assert_array_equal(counts, counts.T)
    np.testing.assert_array_equal(joint_counts(columns), counts)


def test_a_refusal_names_a_few_cells_and_never_a_count() -> None:
    # Four two-level columns over 12 rows: six tables, each with cells of 3 to 6 rows.
    columns = [
        CategoryColumn((f"model.categorical[{c}]=p", f"model.categorical[{c}]=q"), (np.arange(12) >> c) % 2)
        for c in range(4)
    ]
    with pytest.raises(GlmDisclosureError) as refused:
        check_glm_joint_cells(columns, RULES)
    assert refused.value.reason.count(" with ") == 3 and "and others" in refused.value.reason
    assert len(refused.value.reason) < 500  # an audit reason
    assert no_count(refused.value.reason)


def test_value_counts_pass_when_every_value_has_enough_rows() -> None:
    check_glm_value_counts({"model.numeric[0]": [10, 10, 80]}, RULES)
    with pytest.raises(GlmDisclosureError, match=r"model\.outcome"):
        check_glm_value_counts({"model.outcome": [10, 9]}, RULES)


def test_category_columns_are_the_categoricals_with_their_references_and_the_binary_outcome() -> None:
    frame = cohort(LONE)
    columns = category_columns(design(frame, ATTACKED), ATTACKED)
    assert [c.labels for c in columns] == [
        ("model.categorical[0]=I10", "model.categorical[0]=G30.9"),
        ("model.categorical[1]=never", "model.categorical[1]=former", "model.categorical[1]=current"),
        ("model.outcome=0", "model.outcome=1"),
    ]
    expected = [
        frame["icd10"].map(ICD10.levels.index),
        frame["smoking"].map(SMOKING.levels.index),
        frame["event"],
    ]
    for column, codes in zip(columns, expected, strict=True):
        assert column.codes.tolist() == codes.tolist()
