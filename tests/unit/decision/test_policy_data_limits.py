"""Policy data the policies cannot decide with is refused at load, and duo.json costs a bounded load."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import decision_point, edit_data
from test_decision_decide import REQUEST

from gateway.decision import DecisionInput, PolicyDataError, decide, load_bundle
from gateway.decision.bundle import derive
from gateway.decision.embedded import EmbeddedEngine
from gateway.decision.policy_data import MAX_ANCESTRY, MAX_DEPTH, MAX_TERMS, HierarchyError, ancestor_sets

POLICIES = Path(__file__).resolve().parents[3] / "policies"
DSA = REQUEST["dsa"]


def _refused(folder: Path) -> PolicyDataError:
    with pytest.raises(PolicyDataError) as caught:
        load_bundle(folder, "DE")
    return caught.value


def _decision(folder: Path) -> str:
    return decide(EmbeddedEngine(load_bundle(folder, "DE")), DecisionInput.model_validate(REQUEST)).decision


# --- values the policies would read differently from what validation let through ----------------------


@pytest.mark.parametrize(
    "field",
    [
        "min_cell_count",
        "round_to",
        "keep_zero_cells",
        "max_identical_queries",
        "glm_min_rows",
        "glm_max_parameter_ratio",
    ],
)
def test_a_null_threshold_is_refused_naming_it(policy_copy: Path, field: str) -> None:
    # The policies read a threshold with object.get(terms, key, default): a null is a value there, and
    # min({20, null}) is null, which made every decision under the agreement fail.
    edit_data(policy_copy, "agreements", lambda d: d[DSA].setdefault("thresholds", {}).update({field: None}))
    refused = _refused(policy_copy)
    assert refused.path.name == "agreements.json"
    assert refused.field == f"{DSA}.thresholds.{field}"
    assert refused.message == "null is not allowed: omit the key to use the site default"


def test_a_null_visa_is_refused(policy_copy: Path) -> None:
    # `_dsa.visa` holds for a null, so the policies would ask every requester for a visa of no type.
    edit_data(policy_copy, "agreements", lambda d: d[DSA].update(visa=None))
    refused = _refused(policy_copy)
    assert refused.field == f"{DSA}.visa"
    assert "null is not allowed" in refused.message


def test_a_null_dp_still_means_none(policy_copy: Path) -> None:
    # Read with object.get(..., null): null and absent are the same, and the shipped site.json writes null.
    edit_data(policy_copy, "agreements", lambda d: d[DSA].update(dp=None))
    edit_data(policy_copy, "site", lambda d: d["defaults"].update(dp=None))
    assert _decision(policy_copy) == "allow"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("consent_column", "c" * 300),
        ("consent_column", 'consent_duo" OR 1=1 --'),
        ("withdrawn_column", "w" * 64),
        ("withdrawn_column", ""),
    ],
)
def test_a_consent_column_no_query_could_name_is_refused(policy_copy: Path, key: str, value: str) -> None:
    # The decision's consent_filter obligation carries the column; one the query spec refuses as a column
    # name (gateway.query.spec.ColumnName) made every decision malformed.
    edit_data(policy_copy, "site", lambda d: d["patient_consent"].update({key: value}))
    refused = _refused(policy_copy)
    assert refused.path.name == "site.json"
    assert refused.field == f"patient_consent.{key}"


def test_one_column_cannot_hold_both_consent_and_withdrawal(policy_copy: Path) -> None:
    edit_data(policy_copy, "site", lambda d: d["patient_consent"].update(withdrawn_column="consent_duo"))
    assert _refused(policy_copy).field == "patient_consent.withdrawn_column"


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        # Python's JSON reader takes Infinity; canonical JSON (the digest) and the engines do not.
        (
            "site",
            lambda d: d["defaults"].update(dp={"epsilon": float("inf"), "budget": 1.0}),
            "defaults.dp.epsilon",
        ),
        (
            "agreements",
            lambda d: d[DSA].update(dp={"epsilon": 0.5, "budget": float("inf")}),
            f"{DSA}.dp.budget",
        ),
        (
            "site",
            lambda d: d["defaults"].update(max_identical_queries=2**53),
            "defaults.max_identical_queries",
        ),
        (
            "agreements",
            lambda d: d[DSA].update(thresholds={"min_cell_count": 2**60}),
            f"{DSA}.thresholds.min_cell_count",
        ),
        # An integer in a decimal field: canonical JSON holds no integer beyond 2**53 - 1 either.
        ("agreements", lambda d: d[DSA].update(dp={"epsilon": 2**60, "budget": 1.0}), f"{DSA}.dp.epsilon"),
        ("site", lambda d: d["defaults"].update(dp={"epsilon": 0.5, "budget": 2**53}), "defaults.dp.budget"),
    ],
)
def test_a_number_the_bundle_digest_cannot_hold_is_refused_as_data(
    policy_copy: Path, name: str, change: Callable[[Any], None], field: str
) -> None:
    edit_data(policy_copy, name, change)
    assert _refused(policy_copy).field == field


def test_a_steward_replacement_is_refused_the_same_way(policy_copy: Path, tmp_path: Path) -> None:
    from gateway.policy_admin import PolicyDataRejected, replace_data

    point = decision_point(policy_copy, tmp_path)
    path = policy_copy / "data" / "agreements.json"
    before, digest = path.read_text(), point.bundle.digest
    document = json.loads(before)
    document[DSA].setdefault("thresholds", {})["max_identical_queries"] = None
    with pytest.raises(PolicyDataRejected) as rejected:
        replace_data(point, policy_copy, "agreements", document)
    assert rejected.value.field == f"{DSA}.thresholds.max_identical_queries"
    assert "null is not allowed" in rejected.value.message
    assert path.read_text() == before and point.bundle.digest == digest


# --- the DUO and disease hierarchies ------------------------------------------------------------------


def _chain(doc: dict[str, Any], length: int, top: str = "DUO:0000004") -> str:
    """Add `length` permission terms, each the child of the one before, below `top`; the lowest."""
    prev = top
    for i in range(length):
        code = f"DUO:9{i:06d}"
        doc["terms"][code] = {"abbr": "X", "label": "x", "kind": "permission", "parents": [prev]}
        prev = code
    return prev


def _depth_of(doc: Mapping[str, Any], code: str) -> int:
    parents = doc["terms"][code]["parents"]
    return 1 + max((_depth_of(doc, p) for p in parents), default=-1)


def test_a_parent_chain_as_deep_as_allowed_loads(policy_copy: Path) -> None:
    lowest: list[str] = []

    def add(doc: dict[str, Any]) -> None:
        top = "DUO:0000004"
        lowest.append(_chain(doc, MAX_DEPTH - _depth_of(doc, top), top))
        assert _depth_of(doc, lowest[0]) == MAX_DEPTH

    edit_data(policy_copy, "duo", add)
    assert lowest[0] in load_bundle(policy_copy, "DE").data["derived"]["duo_ancestors"]


def test_a_long_parent_chain_is_refused_quickly(policy_copy: Path) -> None:
    # 4,000 terms in one chain took minutes and gigabytes to derive every term's ancestors.
    edit_data(policy_copy, "duo", lambda d: _chain(d, 4_000))
    started = time.monotonic()
    refused = _refused(policy_copy)
    assert time.monotonic() - started < 10
    assert refused.path.name == "duo.json"
    assert (
        refused.field is not None
        and refused.field.startswith("terms.DUO:9")
        and refused.field.endswith(".parents")
    )
    assert f"more than {MAX_DEPTH} parent steps" in refused.message


def test_a_chain_one_step_too_deep_is_refused(policy_copy: Path) -> None:
    edit_data(policy_copy, "duo", lambda d: _chain(d, MAX_DEPTH + 1 - _depth_of(d, "DUO:0000004")))
    assert f"more than {MAX_DEPTH} parent steps" in _refused(policy_copy).message


@pytest.mark.parametrize("table", ["terms", "diseases"])
def test_a_cycle_is_refused(policy_copy: Path, table: str) -> None:
    def cycle(doc: dict[str, Any]) -> None:
        if table == "terms":
            doc["terms"]["DUO:0000004"]["parents"] = ["DUO:0000042"]
            doc["terms"]["DUO:0000042"]["parents"] = ["DUO:0000004"]
        else:
            first, second = list(doc["diseases"])[:2]
            doc["diseases"][first]["parents"] = [second]
            doc["diseases"][second]["parents"] = [first]

    edit_data(policy_copy, "duo", cycle)
    refused = _refused(policy_copy)
    assert refused.field is not None and refused.field.startswith(f"{table}.")
    assert "cycle" in refused.message


def test_a_term_that_is_its_own_parent_is_refused(policy_copy: Path) -> None:
    edit_data(policy_copy, "duo", lambda d: d["terms"]["DUO:0000042"].update(parents=["DUO:0000042"]))
    refused = _refused(policy_copy)
    assert refused.field == "terms.DUO:0000042.parents" and "cycle" in refused.message


def test_too_many_disease_terms_are_refused(policy_copy: Path) -> None:
    def many(doc: dict[str, Any]) -> None:
        doc["diseases"].update({f"X:{i}": {"label": "x"} for i in range(MAX_TERMS + 1)})

    edit_data(policy_copy, "duo", many)
    refused = _refused(policy_copy)
    assert refused.field == "diseases" and f"at most {MAX_TERMS:,}" in refused.message


def test_a_hierarchy_whose_ancestor_table_is_too_large_is_refused(policy_copy: Path) -> None:
    # Shallow and few terms, yet every child lists every root as an ancestor: the table is bounded itself.
    roots, children = 600, MAX_ANCESTRY // 600

    def wide(doc: dict[str, Any]) -> None:
        tops = [f"R:{i}" for i in range(roots)]
        doc["diseases"].update({top: {"label": "r"} for top in tops})
        doc["diseases"].update({f"C:{i}": {"label": "c", "parents": tops} for i in range(children)})

    edit_data(policy_copy, "duo", wide)
    refused = _refused(policy_copy)
    assert refused.field == "diseases" and f"{MAX_ANCESTRY:,}" in refused.message


def _walked(parents: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The ancestor table as the bundle derived it before: a walk from every node."""
    out = {}
    for node in parents:
        seen = {node}
        todo = [node]
        while todo:
            for parent in parents.get(todo.pop(), []):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        out[node] = sorted(seen)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_ancestor_sets_equal_a_walk_from_every_node(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [f"N{i}" for i in range(rng.randint(1, 120))]
    # Parents only among earlier nodes: a random acyclic graph, shuffled so the order of keys is arbitrary.
    parents = {n: rng.sample(nodes[:i], rng.randint(0, min(i, 4))) for i, n in enumerate(nodes)}
    shuffled = dict(rng.sample(list(parents.items()), len(parents)))
    try:
        table = ancestor_sets(shuffled)
    except HierarchyError:
        return  # deeper than allowed: another test covers the refusal
    assert {n: sorted(s) for n, s in table.items()} == _walked(shuffled)


def test_the_shipped_ancestor_tables_are_unchanged() -> None:
    data = json.loads((POLICIES / "data" / "duo.json").read_text())
    derived = derive({"duo": data})
    terms = {c: t.get("parents", []) for c, t in data["terms"].items()}
    diseases = {c: t.get("parents", []) for c, t in data.get("diseases", {}).items()}
    assert derived["duo_ancestors"] == _walked(terms)
    assert derived["disease_ancestors"] == _walked(diseases)
    assert list(derived["duo_ancestors"]) == list(terms)


# --- what a refusal repeats of the document ---------------------------------------------------------


def _first_licence(doc: dict[str, Any]) -> dict[str, Any]:
    licence: dict[str, Any] = next(iter(doc["licences"].values()))
    return licence


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            [("duo", lambda d: d["terms"]["DUO:0000042"]["parents"].append("MRN 4711-0815"))],
            "'MRN 4711-0815' is not a term of this file",
        ),
        (
            [("duo", lambda d: next(iter(d["diseases"].values())).update(parents=["jane.doe@example.org"]))],
            "'jane.doe@example.org' is not a disease of this file",
        ),
        (
            [("duo", lambda d: d["terms"]["DUO:0000042"].update(parents=["DUO:0000042"]))],
            "the parents form a cycle ('DUO:0000042' is its own ancestor)",
        ),
        (
            [("agreements", lambda d: d[DSA]["thresholds"].update(max_identical_queries=4711081))],
            "'4711081' is looser than the site default 20",
        ),
        (
            [("agreements", lambda d: d[DSA].update(not_after="2025-12-31"))],
            "'2025-12-31' is before not_before '2026-01-01'",
        ),
        (
            [("export_control", lambda d: _first_licence(d).update(not_after="1999-01-01"))],
            "is before not_before '",
        ),
        (
            [("agreements", lambda d: d[DSA].update(purposes=["DUO:0000018"]))],
            "'DUO:0000018' is a modifier, not a research purpose: '",
        ),
        (
            [
                ("site", lambda d: d["defaults"].update(dp={"epsilon": 1.0, "budget": 10.0})),
                ("agreements", lambda d: d[DSA].update(dp={"epsilon": 2.0, "budget": 5.0})),
            ],
            "'2.0' is looser than the site default 1.0",
        ),
        (
            [
                ("site", lambda d: d["defaults"].update(dp={"epsilon": 1.0, "budget": 10.0})),
                ("agreements", lambda d: d[DSA].update(dp={"epsilon": 0.5, "budget": 4711081.0})),
            ],
            "'4711081.0' is looser than the site default 10.0",
        ),
    ],
)
def test_a_value_of_the_document_is_quoted_where_a_refusal_names_it(
    policy_copy: Path, edits: list[tuple[str, Callable[[Any], object]]], message: str
) -> None:
    # A steward's refusal leaves out every quoted value that may be an identifier (gateway.policy_admin):
    # one not quoted would be repeated back, and into the refusal's audit entry.
    for name, change in edits:
        edit_data(policy_copy, name, change)
    assert message in _refused(policy_copy).message


def test_a_pasted_value_in_a_refused_replacement_is_not_repeated(policy_copy: Path, tmp_path: Path) -> None:
    from gateway.policy_admin import PolicyDataRejected, replace_data

    point = decision_point(policy_copy, tmp_path)
    document = json.loads((policy_copy / "data" / "agreements.json").read_text())
    document[DSA]["thresholds"]["max_identical_queries"] = 4711081509
    with pytest.raises(PolicyDataRejected) as rejected:
        replace_data(point, policy_copy, "agreements", document)
    assert rejected.value.field == f"{DSA}.thresholds.max_identical_queries"
    assert "4711081509" not in str(rejected.value) and "looser" in rejected.value.message
