"""The wire spec: every bad input names its field; the hash ignores how the same question is written."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.query import (
    CountQuery,
    HistogramQuery,
    QuerySpecError,
    parse_query_spec,
)
from gateway.query.spec import QUERY_SPEC

BASE = {"dataset": "cohort", "agreement": "DSA-2026-014", "purpose": {"duo": ["DUO:0000042"]}}
LEAF = {"column": "bmi", "op": ">", "value": 30}


def spec(**changes: Any) -> dict[str, Any]:
    return {**BASE, "kind": "count", **changes}


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = LEAF
    for _ in range(depth - 1):
        node = {"and": [node]}
    return node


def field_of(data: Any) -> str:
    with pytest.raises(QuerySpecError) as caught:
        parse_query_spec(data)
    return caught.value.field


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (spec(kind="glm"), "kind"),
        ({**BASE}, "kind"),
        (spec(filters={"column": "bmi", "op": "~", "value": 1}), "filters.op"),
        (spec(filters={"and": [LEAF, {"column": "bmi", "op": "in", "value": 3}]}), "filters.and[1].value"),
        (
            spec(filters={"not": {"or": [LEAF, {"column": "x", "op": "like", "value": "a"}]}}),
            "filters.not.or[1].op",
        ),
        (spec(filters={"column": "bmi", "op": "=", "value": {"a": 1}}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "=", "value": [1, 2]}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "="}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "between", "value": [1]}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "in", "value": list(range(101))}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "in", "value": [1, None]}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "=", "value": 2**60}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "=", "value": 2**53}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "in", "value": [1, -(2**53)]}), "filters.value"),
        (spec(filters={"column": "bmi", "op": "is_null", "value": "yes"}), "filters.value"),
        (spec(filters={"column": "bad name", "op": "=", "value": 1}), "filters.column"),
        (spec(filters={"xor": [LEAF]}), "filters.column"),
        (spec(filters={"and": []}), "filters.and"),
        (spec(filters=nested(6)), "filters"),
        (spec(filters={"or": [LEAF] * 33}), "filters"),
        (spec(group_by=["a", "b", "c", "d", "e"]), "group_by"),
        (spec(group_by=["sex", "sex"]), "group_by"),
        (spec(kind="crosstab"), "group_by"),
        (spec(kind="crosstab", group_by=["a", "b", "c", "d"]), "group_by"),
        (spec(kind="summary"), "params"),
        (spec(kind="summary", params={"column": "bmi", "probs": [0.5]}), "params.probs"),
        (spec(kind="quantiles", params={"column": "bmi", "probs": [0]}), "params.probs[0]"),
        (spec(kind="quantiles", params={"column": "bmi", "probs": [0.5, 1]}), "params.probs[1]"),
        (spec(kind="quantiles", params={"column": "bmi", "probs": [0.5, 0.5]}), "params.probs"),
        (spec(kind="quantiles", params={"column": "bmi", "probs": [0.15, 0.15 + 4e-11]}), "params.probs"),
        (spec(kind="quantiles", params={"column": "bmi", "probs": [0.3, 0.1 + 0.2]}), "params.probs"),
        (spec(kind="histogram", params={"column": "bmi", "edges": [1, 3, 2]}), "params.edges"),
        (spec(kind="histogram", params={"column": "bmi", "edges": [1]}), "params.edges"),
        (spec(kind="histogram", params={"column": "bmi", "edges": list(range(102))}), "params.edges"),
        (spec(destination="XX"), "destination"),
        (spec(purpose={"duo": []}), "purpose.duo"),
        (spec(dataset="Cohort; drop"), "dataset"),
        (spec(sql="select 1"), "sql"),
    ],
)
def test_bad_spec_names_its_field(data: dict[str, Any], field: str) -> None:
    assert field_of(data) == field


def test_every_problem_is_listed_with_a_message() -> None:
    with pytest.raises(QuerySpecError) as caught:
        parse_query_spec(spec(kind="glm", group_by=["x"]))
    assert "unknown kind: expected one of count" in caught.value.message and "glm" not in caught.value.message
    with pytest.raises(QuerySpecError) as caught:
        parse_query_spec(spec(dataset="", filters={"column": "bmi", "op": "="}))
    assert [p.field for p in caught.value.problems] == ["dataset", "filters.value"]
    with pytest.raises(QuerySpecError) as caught:
        parse_query_spec(spec(filters={"xor": [LEAF]}))
    assert [p.field for p in caught.value.problems] == ["filters.column", "filters.op", "filters.xor"]


def test_absurd_nesting_is_refused_before_recursion() -> None:
    node: dict[str, Any] = LEAF
    for _ in range(5000):
        node = {"not": node}
    assert field_of(spec(filters=node)) == "filters"


BAD_LEAF = {"column": "1x", "op": "~", "value": {}}  # three faults: column, op and value


def _refused_fast(data: Any) -> QuerySpecError:
    start = time.perf_counter()
    with pytest.raises(QuerySpecError) as caught:
        parse_query_spec(data)
    assert time.perf_counter() - start < 1.0  # validating such a tree whole took seconds
    return caught.value


@pytest.mark.parametrize(
    "filters",
    [
        {"and": [{**LEAF, "op": "~"}] * 10_000},
        {"not": {"or": [BAD_LEAF] * 110_000}},  # about 4 MB, as large a body as the gateway reads
        {"and": [{"or": [BAD_LEAF] * 32}] * 32},  # no list too long
        {"and": [{"and": []}] * 100_000},  # nodes without a condition
    ],
    ids=["wide-and", "huge-body", "wide-tree", "empty-nodes"],
)
def test_a_tree_beyond_the_limits_is_one_problem_found_before_its_leaves_are_validated(
    filters: dict[str, Any],
) -> None:
    refused = _refused_fast(spec(dataset="", filters=filters))
    assert [p.field for p in refused.problems] == ["dataset", "filters"]  # the other fields are checked
    assert refused.problems[1].message == "filters have more than 32 conditions; at most 32 are allowed"


def test_a_tree_built_of_models_is_held_to_the_same_limits() -> None:
    parsed = parse_query_spec(spec(filters=nested(5)))
    assert parsed.filters is not None
    assert parse_query_spec(spec(filters=parsed.filters)).filters == parsed.filters
    assert field_of(spec(filters={"and": [parsed.filters]})) == "filters"  # six levels
    wide = parse_query_spec(spec(filters={"or": [LEAF] * 32})).filters
    assert field_of(spec(filters={"and": [wide, LEAF]})) == "filters"  # 33 conditions


def test_an_and_or_an_or_lists_at_most_32_children_in_the_schema() -> None:
    defs = QUERY_SPEC.json_schema(by_alias=True)["$defs"]
    assert defs["And"]["properties"]["and"]["maxItems"] == 32
    assert defs["Or"]["properties"]["or"]["maxItems"] == 32


def test_a_long_group_by_of_bad_names_is_one_problem() -> None:
    for kind, params in (("count", None), ("kaplan_meier", {"time": "t", "event": "e", "edges": [30]})):
        data = spec(kind=kind, group_by=["1 x"] * 300_000, **({"params": params} if params else {}))
        (problem,) = _refused_fast(data).problems
        assert problem.field == "group_by" and "group_by columns" in problem.message


@pytest.mark.parametrize("where", ["top", "purpose", "filters", "params"])
def test_an_object_of_very_many_members_is_one_problem(where: str) -> None:
    data = copy.deepcopy(spec(kind="summary", params={"column": "bmi"}, filters=dict(LEAF)))
    target = {"top": data, "purpose": data["purpose"], "filters": data["filters"], "params": data["params"]}
    target[where].update({f"k{i}": 1 for i in range(300_000)})  # each was validated and reported in turn
    (problem,) = _refused_fast(data).problems
    assert problem.message.endswith("members; at most 32 are read")


def test_a_purpose_of_very_many_codes_is_one_problem() -> None:
    data = spec(purpose={"duo": ["not a code"] * 1_000_000})  # each was validated and reported in turn
    (problem,) = _refused_fast(data).problems
    assert problem.field == "purpose" and "at most 64 are read" in problem.message


def test_a_glm_session_body_of_very_many_members_is_refused_at_once() -> None:
    from pydantic import ValidationError

    from gateway.federation.glm_site import GlmSessionRequest

    for body in (
        {"dataset": "d", "agreement": "A", "purpose": {"duo": ["x"] * 1_000_000}, "model": {}},
        {"dataset": "d", "agreement": "A", "purpose": {"duo": ["DUO:0000006"]}, "model": {},
         **{f"k{i}": 0 for i in range(300_000)}},
    ):  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(ValidationError) as caught:
            GlmSessionRequest.model_validate(body)
        assert time.perf_counter() - start < 1.0
        assert caught.value.error_count() <= 3


def _condition(op: str, *value: Any) -> dict[str, Any]:
    """A condition on bmi; with no value given, none is written."""
    return {"column": "bmi", "op": op, **({"value": value[0]} if value else {})}


_KM_PARAMS = {"time": "survival_days", "event": "event", "edges": [30.0]}
# Bodies at and past each bound the schema states, each with whether the gateway takes it.
_AT_THE_BOUNDS: dict[str, tuple[dict[str, Any], bool]] = {
    "crosstab of 1 column": (spec(kind="crosstab", group_by=["a"]), True),
    "crosstab of 3 columns": (spec(kind="crosstab", group_by=["a", "b", "c"]), True),
    "crosstab of 4 columns": (spec(kind="crosstab", group_by=["a", "b", "c", "d"]), False),
    "crosstab of none": (spec(kind="crosstab", group_by=[]), False),
    "crosstab without group_by": (spec(kind="crosstab"), False),
    "count of 4 columns": (spec(group_by=["a", "b", "c", "d"]), True),
    "count of 5 columns": (spec(group_by=["a", "b", "c", "d", "e"]), False),
    "a column twice": (spec(group_by=["a", "a"]), False),
    "kaplan_meier by a column": (spec(kind="kaplan_meier", params=_KM_PARAMS, group_by=["a"]), False),
    "kaplan_meier from 0": (spec(kind="kaplan_meier", params={**_KM_PARAMS, "edges": [0.0, 30.0]}), False),
    "in of 1": (spec(filters=_condition("in", [1])), True),
    "in of 100": (spec(filters=_condition("in", list(range(100)))), True),
    "in of 101": (spec(filters=_condition("in", list(range(101)))), False),
    "in of none": (spec(filters=_condition("in", [])), False),
    "in of one value unlisted": (spec(filters=_condition("in", 1)), False),
    "in without a value": (spec(filters=_condition("in")), False),
    "between of 2": (spec(filters=_condition("between", [1, 2])), True),
    "between of 1": (spec(filters=_condition("between", [1])), False),
    "between of 3": (spec(filters=_condition("between", [1, 2, 3])), False),
    "= of a list": (spec(filters=_condition("=", [1])), False),
    "= of null": (spec(filters=_condition("=", None)), False),
    "= without a value": (spec(filters=_condition("=")), False),
    "= of text": (spec(filters=_condition("=", "a")), True),
    "< of a boolean": (spec(filters=_condition("<", True)), True),
    "is_null alone": (spec(filters=_condition("is_null")), True),
    "is_null false": (spec(filters=_condition("is_null", False)), True),
    "is_null of a number": (spec(filters=_condition("is_null", 1)), False),
    "is_null of a list": (spec(filters=_condition("is_null", [True])), False),
    "and of 32": (spec(filters={"and": [LEAF] * 32}), True),
    "or of 33": (spec(filters={"or": [LEAF] * 33}), False),
}


@pytest.mark.parametrize("case", _AT_THE_BOUNDS)
def test_the_schema_states_the_bounds_the_gateway_holds_to(case: str) -> None:
    data, taken = _AT_THE_BOUNDS[case]
    if taken:
        parse_query_spec(data)
    else:
        field_of(data)
    assert Draft202012Validator(QUERY_SPEC.json_schema(by_alias=True)).is_valid(data) is taken


def test_the_schema_describes_the_limits_of_a_filter_tree() -> None:
    """Its depth and its conditions in all are beyond what JSON Schema states: the description says them."""
    for kind, model in QUERY_SPEC.json_schema(by_alias=True)["$defs"].items():
        if kind.endswith("Query"):
            described = model["properties"]["filters"]["description"]
            assert "5 levels deep" in described and "32 conditions" in described, kind
            assert "of 1 to 32 children" in described and "at most 32 members" in described, kind


def test_limits_are_inclusive() -> None:
    parse_query_spec(spec(filters=nested(5)))
    parse_query_spec(spec(filters={"or": [LEAF] * 32}))
    parse_query_spec(spec(filters={"column": "bmi", "op": "in", "value": list(range(100))}))
    parse_query_spec(spec(group_by=["a", "b", "c", "d"]))
    # The largest integers canonical JSON takes, which the query hash is made of.
    parse_query_spec(
        spec(filters={"column": "bmi", "op": "in", "value": [2**53 - 1, -(2**53 - 1)]})
    ).query_hash()
    parse_query_spec(spec(kind="quantiles", params={"column": "bmi", "probs": [0.05, 0.95]}))
    parse_query_spec(spec(kind="histogram", params={"column": "bmi", "edges": list(range(101))}))


def test_kinds_parse_to_their_models_and_report_their_columns() -> None:
    parsed = parse_query_spec(
        spec(
            kind="histogram",
            filters={"and": [LEAF, {"not": {"column": "sex", "op": "is_null"}}]},
            group_by=["smoking"],
            params={"column": "systolic_bp", "edges": [100, 140]},
        )
    )
    assert isinstance(parsed, HistogramQuery)
    assert parsed.columns_touched() == ("bmi", "sex", "smoking", "systolic_bp")
    facts = parsed.query_facts()
    assert facts.kind == "histogram" and facts.group_by == ("smoking",)
    assert facts.filters == {
        "and": [LEAF, {"not": {"column": "sex", "op": "is_null", "value": None}}],
    }
    assert isinstance(parse_query_spec(spec()), CountQuery)


def test_openapi_schema_has_one_model_per_kind() -> None:
    schema = QUERY_SPEC.json_schema()
    assert set(schema["discriminator"]["mapping"]) == {
        "count",
        "crosstab",
        "summary",
        "histogram",
        "quantiles",
        "kaplan_meier",
    }


QUESTION = spec(
    kind="crosstab",
    group_by=["sex", "smoking"],
    filters={"and": [LEAF, {"column": "icd10", "op": "in", "value": ["I10", "E11.9", "C18.9"]}]},
)


def _shuffled(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@settings(max_examples=30, deadline=None)
@given(rnd=st.randoms(use_true_random=False), indent=st.sampled_from([None, 1, 4]))
def test_hash_ignores_key_order_and_whitespace(rnd: Any, indent: int | None) -> None:
    text = json.dumps(_shuffled(QUESTION, rnd), indent=indent)
    assert parse_query_spec(json.loads(text)).query_hash() == parse_query_spec(QUESTION).query_hash()


def test_hash_is_stable_and_tells_questions_apart() -> None:
    reference = parse_query_spec(QUESTION).query_hash()
    # Pinned: a change here changes every recorded query hash in audit logs and repeat counters.
    assert reference == parse_query_spec(json.loads(json.dumps(QUESTION))).query_hash()
    assert len(reference) == 64 and int(reference, 16) >= 0
    same = json.loads(json.dumps(QUESTION))
    same["filters"]["and"][1]["value"] = ["C18.9", "I10", "E11.9", "I10"]
    same["destination"] = None
    same["filters"]["and"][0]["value"] = 30.0
    assert parse_query_spec(same).query_hash() == reference
    other = json.loads(json.dumps(QUESTION))
    other["filters"]["and"][0]["value"] = 31
    assert parse_query_spec(other).query_hash() != reference
    assert parse_query_spec({**QUESTION, "group_by": ["smoking", "sex"]}).query_hash() != reference
    assert parse_query_spec({**QUESTION, "agreement": "DSA-2"}).query_hash() != reference
    implicit = parse_query_spec(spec(filters={"column": "x", "op": "is_null"}))
    explicit = parse_query_spec(spec(filters={"column": "x", "op": "is_null", "value": True}, group_by=[]))
    assert implicit.query_hash() == explicit.query_hash()


def _key(filters: Any) -> str:
    return parse_query_spec(spec(filters=filters)).repeat_key(b"consent")


def test_a_respelled_filter_is_the_same_query_against_the_identical_query_limit() -> None:
    # Each of these asks what {"sex" = "F"} asks; counted apart, they would multiply the agreement's limit.
    female = {"column": "sex", "op": "=", "value": "F"}
    respelled = [
        {"and": [female]},
        {"or": [female]},
        {"not": {"not": female}},
        {"column": "sex", "op": "in", "value": ["F"]},
        {"column": "sex", "op": "in", "value": ["F", "F"]},
        {"column": "sex", "op": "between", "value": ["F", "F"]},
        {"and": [female, female]},
        {"and": [{"and": [female]}, female]},
    ]
    assert {_key(f) for f in respelled} == {_key(female)}
    both = [female, {"column": "bmi", "op": ">", "value": 30}]
    assert _key({"and": both}) == _key({"and": both[::-1]}) == _key({"and": [{"and": both[:1]}, both[1]]})
    # Queries that ask something else stay apart.
    assert len({_key(female), _key({"or": both}), _key({"and": both}), _key({"not": female})}) == 4
    assert _key({"column": "bmi", "op": "between", "value": [20, 30]}) != _key(
        {"column": "bmi", "op": "=", "value": 20}
    )


def test_an_or_of_values_is_its_in_and_two_bounds_are_their_between() -> None:
    female, male = ({"column": "sex", "op": "=", "value": v} for v in ("F", "M"))
    either = {"column": "sex", "op": "in", "value": ["M", "F"]}
    assert _key({"or": [female, male]}) == _key(either) == _key({"or": [male, {"or": [female]}, female]})
    low, high = {"column": "bmi", "op": ">=", "value": 20}, {"column": "bmi", "op": "<=", "value": 30}
    between = {"column": "bmi", "op": "between", "value": [20, 30]}
    assert _key({"and": [low, high]}) == _key(between)
    assert _key({"and": [low, high, female]}) == _key({"and": [female, between]})
    # Conditions on other columns, or a strict bound, are other questions.
    assert _key({"or": [female, {"column": "bmi", "op": "=", "value": 20}]}) != _key(either)
    assert _key({"and": [{**low, "op": ">"}, high]}) != _key(between)


def test_one_instant_spelled_with_any_offset_or_fraction_is_one_query() -> None:
    # A zoned column compares instants, so each of these selects the rows `seen_at >= 2018-01-01T00:00Z` does.
    instant = {"column": "seen_at", "op": ">=", "value": "2018-01-01T00:00:00+00:00"}
    respelled = [
        "2018-01-01T00:00:00Z", "2018-01-01T00:00:00-00:00", "2018-01-01T01:00:00+01:00",
        "2017-12-31T19:00:00-05:00", "2018-01-01T00:00:00.0Z", "2018-01-01T05:30:00.000000+05:30",
    ]  # fmt: skip
    assert {_key({**instant, "value": v}) for v in respelled} == {_key(instant)}
    hashes = {parse_query_spec(spec(filters={**instant, "value": v})).query_hash() for v in respelled}
    assert hashes == {parse_query_spec(spec(filters=instant)).query_hash()}
    # One instant twice in an `in` is one value; a `between` of one instant is its `=`.
    twice = {"column": "seen_at", "op": "in", "value": ["2018-01-01T00:00:00Z", "2018-01-01T01:00:00+01:00"]}
    one = {
        "column": "seen_at",
        "op": "between",
        "value": ["2018-01-01T00:00:00Z", "2018-01-01T01:00:00+01:00"],
    }
    assert _key(twice) == _key(one) == _key({**instant, "op": "="})
    # A timestamp without a zone: only its fraction of a second has other spellings.
    naive = {"column": "visit_at", "op": "<", "value": "2020-01-01T08:00:00.500000"}
    assert _key({**naive, "value": "2020-01-01T08:00:00.5"}) == _key(naive)
    assert _key({**naive, "value": "2020-01-01T08:00:00.000"}) == _key(
        {**naive, "value": "2020-01-01T08:00:00"}
    )
    # Other instants, and a wall time against an instant, stay apart.
    assert len({_key(instant), _key({**instant, "value": "2018-01-01T00:00:00+01:00"}),
                _key({**instant, "value": "2018-01-01T00:00:00"})}) == 3  # fmt: skip


def test_a_hash_of_values_already_in_their_one_spelling_is_unchanged() -> None:
    # Pinned from the hash before timestamps were reduced: the audit log and the identical-query counters
    # hold such hashes, and a change would reset every stored count.
    canonical = spec(
        group_by=["sex"],
        filters={
            "and": [
                {"column": "admission_date", "op": "between", "value": ["2018-01-01", "2019-12-31"]},
                {"column": "seen_at", "op": "<", "value": "2021-01-01T00:00:00+00:00"},
                {"column": "seen_at", "op": ">", "value": "2019-06-01T12:30:00.250000+00:00"},
                {
                    "column": "visit_at",
                    "op": "in",
                    "value": ["2020-01-01T08:00:00", "2020-01-02T08:00:00.500000"],
                },
                {"column": "sex", "op": "=", "value": "F"},
            ]
        },
    )
    parsed = parse_query_spec(canonical)
    assert parsed.query_hash() == "ab442bc78ca5461eca3887f142cb5e9a97148f89bb561ea9090def3a43b0ab3f"
    assert parsed.repeat_key(b"consent") == "24728b1d9808574fcc41bd5695331642a7875c2273794186ba166e04d27dc545"


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("histogram", {"column": "bmi", "edges": ["1", "2"]}, "params.edges[0]"),
        ("histogram", {"column": "bmi", "edges": [True, 2]}, "params.edges[0]"),
        ("kaplan_meier", {**_KM_PARAMS, "edges": ["30"]}, "params.edges[0]"),
        ("quantiles", {"column": "bmi", "probs": ["0.5"]}, "params.probs[0]"),
    ],
)
def test_numbers_written_as_text_or_booleans_are_refused_as_the_schema_refuses_them(
    kind: str, params: dict[str, Any], field: str
) -> None:
    data = spec(kind=kind, params=params)
    with pytest.raises(QuerySpecError) as refused:
        parse_query_spec(data)
    assert refused.value.field == field
    assert not Draft202012Validator(QUERY_SPEC.json_schema(by_alias=True)).is_valid(data)
