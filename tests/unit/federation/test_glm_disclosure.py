"""GLM disclosure checks: rows, parameters per row, binary cells — with the attacks they stop."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from gateway.decision.models import Purpose
from gateway.federation.glm_site import (
    CategoricalCovariate,
    GlmArrays,
    GlmDataError,
    GlmModel,
    GlmSession,
    GlmSessionRequest,
    GlmSessions,
    binary_cells,
    check_rows,
    design,
    iteration_statistics,
)
from pseudonymize.disclosure import DisclosureError, DisclosureRules
from pseudonymize.disclosure.glm_checks import GlmDisclosureError, check_glm_release

RULES = DisclosureRules(10)


def check(
    rows: int, parameters: int, cells: dict[str, int] | None = None, rules: DisclosureRules = RULES
) -> None:
    check_glm_release(rows, parameters, cells or {}, rules, min_rows=10, max_parameter_ratio=0.1)


def test_enough_rows_few_parameters_and_large_cells_pass() -> None:
    check(100, 10, {"sex=F": 50, "sex=M": 50})


def test_fewer_rows_than_glm_min_rows_fail() -> None:
    with pytest.raises(GlmDisclosureError, match="glm_min_rows"):
        check(9, 1)


def test_more_parameters_than_the_ratio_allows_fail() -> None:
    # A model with a parameter per few rows is close to a lookup table of those rows.
    with pytest.raises(GlmDisclosureError, match="glm_max_parameter_ratio"):
        check(100, 11)


def test_a_small_binary_cell_fails_and_is_named_without_its_count() -> None:
    with pytest.raises(GlmDisclosureError) as refused:
        check(100, 3, {"smoker=1": 9, "smoker=0": 91, "sex=F": 50})
    assert "smoker=1" in refused.value.reason and "sex=F" not in refused.value.reason
    assert "9" not in refused.value.reason.replace("min_cell_count", "")
    assert isinstance(refused.value, DisclosureError)


def test_a_zero_cell_passes_only_where_the_agreement_keeps_zeros() -> None:
    with pytest.raises(GlmDisclosureError):
        check(100, 3, {"grade=IV": 0})
    check(100, 3, {"grade=IV": 0}, DisclosureRules(10, keep_zero_cells=True))


def test_the_information_matrix_reveals_a_dummys_count() -> None:
    """Why binary cells are checked: for a gaussian model XᵀX holds each dummy's row count."""
    frame = pd.DataFrame({"y": np.arange(40.0), "grade": ["a"] * 33 + ["b"] * 7})
    model = GlmModel(
        outcome="y", family="gaussian", categorical=[CategoricalCovariate(column="grade", levels=["a", "b"])]
    )
    data = design(frame, model)
    stats = iteration_statistics(data, np.zeros(2), "gaussian")
    assert stats.xtwx[1, 1] == 7
    cells = binary_cells(data, model)
    assert cells["grade=b"] == 7 and cells["grade=a (reference)"] == 33
    with pytest.raises(GlmDisclosureError, match="grade=b"):
        check(40, 2, cells)


def test_binary_cells_cover_two_valued_numeric_columns_and_the_binomial_outcome() -> None:
    frame = pd.DataFrame({"y": [0, 1] * 20, "smoker": [0.0] * 35 + [1.0] * 5, "age": np.arange(40.0)})
    model = GlmModel(outcome="y", family="binomial", numeric=["smoker", "age"])
    cells = binary_cells(design(frame, model), model)
    assert cells == {"smoker (lower value)": 35, "smoker (higher value)": 5, "y=1": 20, "y=0": 20}


def test_a_two_valued_columns_refusal_names_no_value_of_it() -> None:
    """The values of a numeric column are the data's: a refusal names them by rank only."""
    frame = pd.DataFrame({"y": np.arange(40.0), "dose": [2.5] * 35 + [7.5] * 5})
    model = GlmModel(outcome="y", family="gaussian", numeric=["dose"])
    with pytest.raises(GlmDisclosureError) as refused:
        check(40, 2, binary_cells(design(frame, model), model))
    assert "dose (higher value)" in str(refused.value)
    assert "7.5" not in str(refused.value) and "2.5" not in str(refused.value)


def test_design_leaves_out_incomplete_rows_other_levels_and_non_positive_weights() -> None:
    frame = pd.DataFrame(
        {
            "y": [1.0, 2.0, None, 4.0, 5.0, 6.0],
            "g": ["a", "b", "a", "c", "a", "b"],
            "w": [1.0, 2.0, 1.0, 1.0, 0.0, -1.0],
        }
    )
    model = GlmModel(
        outcome="y",
        family="gaussian",
        categorical=[CategoricalCovariate(column="g", levels=["a", "b"])],
        weights="w",
    )
    data = design(frame, model)
    assert data.rows == 2
    assert data.y.tolist() == [1.0, 2.0] and data.weights.tolist() == [1.0, 2.0]


def test_outcomes_outside_the_family_are_refused() -> None:
    frame = pd.DataFrame({"y": [0.0, 2.0, 1.0], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(GlmDataError, match="0/1"):
        design(frame, GlmModel(outcome="y", family="binomial", numeric=["x"]))
    with pytest.raises(GlmDataError, match="negative"):
        design(frame.assign(y=[-1.0, 0.0, 1.0]), GlmModel(outcome="y", family="poisson", numeric=["x"]))


def test_withdrawn_patients_leave_the_session_data() -> None:
    data = GlmArrays(
        np.ones((3, 1)), np.zeros(3), np.zeros(3), np.ones(3), np.array(["p1", "p2", "p3"], object)
    )
    left = data.without({"p2"})
    assert left.rows == 2 and left.patients is not None and left.patients.tolist() == ["p1", "p3"]


def test_model_spec_rejects_duplicates_and_reference_only_levels() -> None:
    with pytest.raises(ValueError, match="twice"):
        GlmModel(outcome="y", family="gaussian", numeric=["y"])
    with pytest.raises(ValueError):
        CategoricalCovariate(column="g", levels=["a"])
    with pytest.raises(ValueError, match="distinct"):
        CategoricalCovariate(column="g", levels=["a", "a"])
    # Levels are part of the request's hash, so only what canonical JSON (RFC 8785) holds.
    for level in (2**53, -(10**30), "\ud800", "", "x" * 257):
        with pytest.raises(ValueError):
            CategoricalCovariate(column="g", levels=["a", level])
    assert CategoricalCovariate(column="g", levels=[True, 2**53 - 1, "b"]).levels == [True, 2**53 - 1, "b"]
    names = GlmModel(
        outcome="y",
        family="poisson",
        numeric=["x"],
        categorical=[CategoricalCovariate(column="g", levels=["a", "b", "c"])],
    ).parameter_names()
    assert names == ["(Intercept)", "x", "g[b]", "g[c]"]


def _session(sub: str, agreement: str) -> GlmSession:
    request = GlmSessionRequest(
        dataset="d",
        agreement=agreement,
        purpose=Purpose(duo=("DUO:0000006",)),
        model=GlmModel(outcome="y", family="gaussian", numeric=["x"]),
    )
    data = GlmArrays(np.ones((20, 2)), np.zeros(20), np.zeros(20), np.ones(20))
    return GlmSession(uuid.uuid4().hex, sub, request, "0" * 64, None, None, data, set())  # type: ignore[arg-type]


def test_sessions_belong_to_one_researcher_and_agreement() -> None:
    sessions = GlmSessions()
    session = _session("researcher-1", "DSA-1")
    sessions.add(session)
    assert sessions.get(session.id, "researcher-1", "DSA-1") is session
    assert sessions.get(session.id, "researcher-2", "DSA-1") is None
    assert sessions.get(session.id, "researcher-1", "DSA-2") is None
    assert sessions.owned(session.id, "researcher-2") is None
    sessions.remove(session.id)
    assert sessions.get(session.id, "researcher-1", "DSA-1") is None


@pytest.mark.parametrize("sub", ["josé", "研究者", "r\ud800"])
def test_sessions_of_a_subject_beyond_ascii_are_found_by_their_owner_only(sub: str) -> None:
    sessions = GlmSessions()
    session = _session(sub, "DSA-1")
    sessions.add(session)
    assert sessions.get(session.id, sub, "DSA-1") is session and sessions.owned(session.id, sub) is session
    assert sessions.get(session.id, "jose", "DSA-1") is None and sessions.owned(session.id, sub + "x") is None


def test_idle_sessions_expire() -> None:
    sessions = GlmSessions(idle_seconds=60)
    stale, fresh = _session("r", "A"), _session("r", "A")
    stale.last_used -= 61
    sessions.add(stale)
    sessions.add(fresh)
    assert sessions.get(stale.id, "r", "A") is None and sessions.get(fresh.id, "r", "A") is fresh
    assert len(sessions) == 1


def test_a_researcher_holds_a_bounded_number_of_sessions() -> None:
    sessions = GlmSessions(max_open=2)
    for _ in range(2):
        assert sessions.room_for("issuer\nr1")
        sessions.add(_session("issuer\nr1", "A"))
    assert not sessions.room_for("issuer\nr1")
    assert sessions.room_for("issuer\nr2")


def _cohort(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame(
        {
            "bmi": rng.normal(27, 4, n),
            "sbp": rng.normal(130, 15, n),
            "country": ["DE"] * (n - 12) + ["FR"] * 11 + ["LU"],
            "w": np.ones(n),
        }
    )


def test_a_model_one_restriction_apart_from_another_is_refused() -> None:
    # The attack: sum(bmi) over every row with bmi, minus sum(bmi) over the rows that also have sbp, is
    # the bmi of the one patient without sbp. Each restriction the researcher adds is a filter.
    frame = _cohort()
    check_rows(frame, GlmModel(outcome="bmi", family="gaussian"), RULES)
    check_rows(frame, GlmModel(outcome="bmi", family="gaussian", numeric=["sbp"]), RULES)
    one_missing = frame.assign(sbp=[None, *frame["sbp"][1:]])
    with pytest.raises(GlmDisclosureError, match="leaves out fewer than 10 of the rows with its outcome"):
        check_rows(one_missing, GlmModel(outcome="bmi", family="gaussian", numeric=["sbp"]), RULES)
    # Categorical levels are an `in` filter: leaving out the one patient from LU is refused.
    levels = GlmModel(
        outcome="bmi",
        family="gaussian",
        categorical=[CategoricalCovariate(column="country", levels=["DE", "FR"])],
    )
    with pytest.raises(GlmDisclosureError, match="leaves out fewer than 10"):
        check_rows(frame, levels, RULES)
    every = CategoricalCovariate(column="country", levels=["DE", "FR", "LU"])
    with_lu = GlmModel(outcome="bmi", family="gaussian", categorical=[every])
    check_rows(frame, with_lu, RULES)
    # Weights at zero leave rows out too.
    with pytest.raises(GlmDisclosureError, match="leaves out fewer than 10"):
        check_rows(
            frame.assign(w=[0.0] + [1.0] * 39), GlmModel(outcome="bmi", family="gaussian", weights="w"), RULES
        )


def test_a_restriction_that_alone_leaves_out_a_few_rows_is_named() -> None:
    # Twelve rows lack sbp, so the model leaves out enough in all; but of the rows sbp keeps, the levels
    # leave out only the one from LU: comparing with the model without the levels would describe it.
    frame = _cohort().assign(sbp=[None] * 12 + list(_cohort()["sbp"][12:]))
    frame.loc[0, "country"] = "LU"  # now two from LU, one of them without sbp
    levels = CategoricalCovariate(column="country", levels=["DE", "FR"])
    model = GlmModel(outcome="bmi", family="gaussian", numeric=["sbp"], categorical=[levels])
    with pytest.raises(GlmDisclosureError, match="levels of country: leaves out fewer than 10") as err:
        check_rows(frame, model, RULES)
    assert not any(ch.isdigit() for ch in str(err.value).replace("10", ""))  # no count, no value


def test_a_model_keeping_too_few_rows_is_refused() -> None:
    frame = _cohort(40).assign(sbp=[1.0] * 9 + [None] * 31)
    with pytest.raises(GlmDisclosureError, match="keeps fewer than 10 rows"):
        check_rows(frame, GlmModel(outcome="bmi", family="gaussian", numeric=["sbp"]), RULES)


def test_a_text_or_date_outcome_is_a_data_error_not_a_crash() -> None:
    frame = pd.DataFrame({"y": ["recovered", "died", "recovered"], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(GlmDataError) as err:
        design(frame, GlmModel(outcome="y", family="binomial", numeric=["x"]))
    assert err.value.field == "model.outcome" and "recovered" not in str(err.value)
    dates = frame.assign(y=pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]).date)
    with pytest.raises(GlmDataError):
        design(dates, GlmModel(outcome="y", family="binomial", numeric=["x"]))


def test_column_fields_name_the_request_paths() -> None:
    g = CategoricalCovariate(column="g", levels=["x", "z"])
    model = GlmModel(outcome="y", family="gaussian", numeric=["a", "b"], categorical=[g], weights="w")
    assert model.column_fields() == [
        ("y", "model.outcome"),
        ("a", "model.numeric[0]"),
        ("b", "model.numeric[1]"),
        ("g", "model.categorical[0].column"),
        ("w", "model.weights"),
    ]
