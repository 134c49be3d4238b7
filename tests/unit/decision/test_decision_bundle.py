"""Loading a policy bundle: digest, data validation naming file and field, broken policies refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import regorus
from policy_helpers import edit_data
from test_decision_decide import REQUEST

from gateway.decision import DecisionInput, PolicyDataError, PolicySourceError, decide, load_bundle
from gateway.decision.bundle import read_policies
from gateway.decision.embedded import (
    EmbeddedEngine,
    TreeWalkingEngine,
    build_vm,
    comprehension_conditions,
    evaluate_vm,
)
from gateway.decision.rvm_verified import VERIFIED_MODULES, module_digest, rvm_verified

POLICIES = Path(__file__).resolve().parents[3] / "policies"
_PROBLEMS = "data.fedgate.decision.input_problems"


def test_bundle_excludes_tests_and_carries_site_jurisdiction() -> None:
    bundle = load_bundle(POLICIES, "DE")
    assert bundle.policies and not any(p.endswith("_test.rego") for p, _ in bundle.policies)
    assert bundle.data["site"]["jurisdiction"] == "DE"
    assert bundle.data_document()["meta"] == {"bundle_digest": bundle.digest}
    assert len(bundle.digest) == 64


def test_digest_is_stable_and_tracks_policy_data_and_jurisdiction(policy_copy: Path) -> None:
    first = load_bundle(policy_copy, "DE").digest
    assert load_bundle(policy_copy, "DE").digest == first
    assert load_bundle(policy_copy, "FR").digest != first
    edit_data(policy_copy, "site", lambda d: d["defaults"].update(min_cell_count=11))
    changed_data = load_bundle(policy_copy, "DE").digest
    assert changed_data != first
    rego = policy_copy / "agreement" / "agreement.rego"
    rego.write_text(rego.read_text() + "\n# a steward's note\n")
    assert load_bundle(policy_copy, "DE").digest not in (first, changed_data)


def test_test_files_do_not_change_the_digest(policy_copy: Path) -> None:
    first = load_bundle(policy_copy, "DE").digest
    twin = policy_copy / "agreement" / "agreement_test.rego"
    twin.write_text(twin.read_text() + "\n")
    assert load_bundle(policy_copy, "DE").digest == first


def _set_dsa(field: str, value: Any) -> Callable[[Any], None]:
    return lambda d: d["DSA-2026-014"].__setitem__(field, value)


@pytest.mark.parametrize(
    ("name", "change", "file", "field", "message"),
    [
        (
            "agreements",
            _set_dsa("not_after", "2026-02-30"),
            "agreements.json",
            "DSA-2026-014.not_after",
            "2026-02-30",
        ),
        (
            "agreements",
            _set_dsa("not_after", "2025-12-31"),
            "agreements.json",
            "DSA-2026-014.not_after",
            "before",
        ),
        (
            "agreements",
            _set_dsa("purposes", ["DUO:0009999"]),
            "agreements.json",
            "DSA-2026-014.purposes.0",
            "DUO",
        ),
        (
            "agreements",
            _set_dsa("purposes", ["DUO:0000021"]),
            "agreements.json",
            "DSA-2026-014.purposes.0",
            "modifier",
        ),
        (
            "agreements",
            _set_dsa("standard_contractual_clauses", [{"id": "x", "countries": ["XX"]}]),
            "agreements.json",
            "DSA-2026-014.standard_contractual_clauses.0.countries.0",
            "country",
        ),
        (
            "agreements",
            _set_dsa("thresholds", {"min_cell_count": 5}),
            "agreements.json",
            "DSA-2026-014.thresholds.min_cell_count",
            "looser than the site default 10",
        ),
        (
            "agreements",
            _set_dsa("thresholds", {"max_identical_queries": 50}),
            "agreements.json",
            "DSA-2026-014.thresholds.max_identical_queries",
            "looser",
        ),
        (
            "agreements",
            _set_dsa("parties", ["org-nobody"]),
            "agreements.json",
            "DSA-2026-014.parties.0",
            "org",
        ),
        (
            "agreements",
            _set_dsa("query_kinds", ["sql"]),
            "agreements.json",
            "DSA-2026-014.query_kinds.0",
            "sql",
        ),
        ("agreements", _set_dsa("colour", "blue"), "agreements.json", "DSA-2026-014.colour", "unknown field"),
        # Disease-specific research under an agreement is limited to the diseases it lists: it must list some.
        (
            "agreements",
            _set_dsa("purposes", ["DUO:0000006", "DUO:0000007"]),
            "agreements.json",
            "DSA-2026-014.diseases",
            "disease-specific research (DUO:0000007) is one of the purposes",
        ),
        # Only the ethics approvals an agreement lists satisfy DUO:0000021: ids, as long as an input's.
        (
            "agreements",
            _set_dsa("ethics_approvals", [77]),
            "agreements.json",
            "DSA-2026-014.ethics_approvals.0",
            "valid string",
        ),
        (
            "agreements",
            _set_dsa("ethics_approvals", [""]),
            "agreements.json",
            "DSA-2026-014.ethics_approvals.0",
            "at least 1",
        ),
        (
            "agreements",
            _set_dsa("ethics_approvals", ["EC-1", "x" * 257]),
            "agreements.json",
            "DSA-2026-014.ethics_approvals.1",
            "at most 256",
        ),
        (
            "agreements",
            _set_dsa("ethics_approvals", [f"EC-{n}" for n in range(1001)]),
            "agreements.json",
            "DSA-2026-014.ethics_approvals",
            "at most 1000",
        ),
        (
            "agreements",
            _set_dsa("ethics_approvals", None),
            "agreements.json",
            "DSA-2026-014.ethics_approvals",
            "list",
        ),
        # A required visa names who may have asserted it, never the researcher for an access grant.
        (
            "agreements",
            _set_dsa(
                "visa",
                {"type": "ControlledAccessGrants", "value": "https://ega.example/x", "by": ["dac", "self"]},
            ),
            "agreements.json",
            "DSA-2026-014.visa.by.1",
            "'self' is never accepted for ControlledAccessGrants",
        ),
        (
            "agreements",
            _set_dsa(
                "visa", {"type": "ControlledAccessGrants", "value": "https://ega.example/x", "by": ["anyone"]}
            ),
            "agreements.json",
            "DSA-2026-014.visa.by.0",
            "",
        ),
        (
            "agreements",
            _set_dsa("visa", {"type": "ControlledAccessGrants", "value": "https://ega.example/x", "by": []}),
            "agreements.json",
            "DSA-2026-014.visa.by",
            "at least 1",
        ),
        (
            "agreements",
            _set_dsa(
                "visa", {"type": "ControlledAccessGrants", "value": "https://ega.example/x", "source": "dac"}
            ),
            "agreements.json",
            "DSA-2026-014.visa.source",
            "not an absolute URL",
        ),
        (
            "agreements",
            _set_dsa("export_licences", ["EXL-X"]),
            "agreements.json",
            "DSA-2026-014.export_licences.0",
            "",
        ),
        (
            "organisations",
            lambda d: d["org-aphp"].update(country="France"),
            "organisations.json",
            "org-aphp.country",
            "",
        ),
        ("transfer", lambda d: d["blocked"].append("ZZ"), "transfer.json", "blocked.5", "country"),
        (
            "duo",
            lambda d: d["terms"]["DUO:0000006"].update(parents=["DUO:1"]),
            "duo.json",
            "terms.DUO:0000006.parents",
            "",
        ),
        (
            "export_control",
            lambda d: d["licences"]["EXL-2026-003"].update(not_before="2028-01-01"),
            "export_control.json",
            "licences.EXL-2026-003.not_after",
            "before",
        ),
        (
            "site",
            lambda d: d["defaults"].update(min_cell_count=0),
            "site.json",
            "defaults.min_cell_count",
            "",
        ),
        # The engines read the file as written: a boolean or number in another JSON type would reach the
        # policies as a value they compare unequal to the one meant (a "suspended" agreement that allows).
        ("agreements", _set_dsa("suspended", "true"), "agreements.json", "DSA-2026-014.suspended", "bool"),
        ("agreements", _set_dsa("suspended", 1), "agreements.json", "DSA-2026-014.suspended", "bool"),
        (
            "export_control",
            lambda d: d["licences"]["EXL-2026-003"].update(re_export=0),
            "export_control.json",
            "licences.EXL-2026-003.re_export",
            "bool",
        ),
        (
            "organisations",
            lambda d: d["org-aphp"].update(non_profit="yes"),
            "organisations.json",
            "org-aphp.non_profit",
            "bool",
        ),
        (
            "site",
            lambda d: d["defaults"].update(glm_max_parameter_ratio="0.1"),
            "site.json",
            "defaults.glm_max_parameter_ratio",
            "number",
        ),
    ],
)
def test_invalid_policy_data_names_file_and_field(
    policy_copy: Path, name: str, change: Callable[[Any], None], file: str, field: str, message: str
) -> None:
    edit_data(policy_copy, name, change)
    with pytest.raises(PolicyDataError) as caught:
        load_bundle(policy_copy, "DE")
    assert caught.value.path.name == file
    assert caught.value.field == field
    assert message in caught.value.message


def test_malformed_json_names_the_line(policy_copy: Path) -> None:
    (policy_copy / "data" / "site.json").write_text('{\n  "defaults": ,\n}')
    with pytest.raises(PolicyDataError, match=r"site.json: not valid JSON \(line 2\)"):
        load_bundle(policy_copy, "DE")


def test_json_nested_past_the_parsers_depth_names_the_file(policy_copy: Path) -> None:
    (policy_copy / "data" / "site.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PolicyDataError, match=r"site.json: the JSON nests too deeply"):
        load_bundle(policy_copy, "DE")


def test_missing_and_unknown_data_files_are_refused(policy_copy: Path) -> None:
    (policy_copy / "data" / "extra.json").write_text("{}")
    with pytest.raises(PolicyDataError, match="unknown policy data file"):
        load_bundle(policy_copy, "DE")
    (policy_copy / "data" / "extra.json").unlink()
    (policy_copy / "data" / "duo.json").unlink()
    with pytest.raises(PolicyDataError, match="required policy data file is missing"):
        load_bundle(policy_copy, "DE")


def test_unknown_site_jurisdiction_is_refused() -> None:
    with pytest.raises(PolicyDataError, match=r"site\.jurisdiction"):
        load_bundle(POLICIES, "EU")


def test_rego_syntax_error_names_the_file(policy_copy: Path) -> None:
    (policy_copy / "consent" / "consent.rego").write_text("package fedgate.consent\n\ndeny contains if {\n")
    with pytest.raises(PolicySourceError) as caught:
        load_bundle(policy_copy, "DE")
    assert caught.value.path.name == "consent.rego"


def test_policies_that_fail_to_evaluate_are_refused(policy_copy: Path) -> None:
    (policy_copy / "decision" / "loop.rego").write_text(
        "package fedgate.decision\n\nimport rego.v1\n\ndeny_loop := x if { x := deny_loop }\n"
        "input_problems contains deny_loop if true\n"
    )
    with pytest.raises(PolicySourceError, match="policies do not evaluate"):
        load_bundle(policy_copy, "DE")


def test_shipped_modules_are_the_ones_verified_on_the_rvm() -> None:
    # Changing a shipped module takes it off the RVM until its digest is listed again (after the suite,
    # which holds the RVM's answers to the tree-walking engine's and OPA's, passes).
    shipped = read_policies(POLICIES, include_tests=False)
    assert {module_digest(source) for _, source in shipped} == VERIFIED_MODULES
    assert rvm_verified(shipped)


def test_a_stewards_module_is_decided_by_the_tree_walking_engine(policy_copy: Path) -> None:
    # On the RVM an assignment from a missing lookup does not fail its rule body: this clause would deny
    # every request there, while Rego (the tree-walking engine, OPA) never fires it. The same divergence
    # the other way round would allow what Rego denies.
    (policy_copy / "agreement" / "steward.rego").write_text(
        "package fedgate.agreement\n\nimport rego.v1\n\n"
        'deny contains "steward clause" if {\n\tterms := data.fedgate_data.no_such_table[input.dsa]\n'
        "\tnot terms.waived\n}\n"
    )
    bundle = load_bundle(policy_copy, "DE")
    assert not rvm_verified(bundle.policies)
    engine = EmbeddedEngine(bundle)
    assert not engine.on_rvm
    request = DecisionInput.model_validate(REQUEST)
    assert decide(engine, request) == decide(TreeWalkingEngine(bundle), request)
    assert decide(engine, request).decision == "allow"
    on_rvm = json.loads(evaluate_vm(build_vm(bundle), request.policy_input_json()))
    assert isinstance(on_rvm, dict) and "steward clause" in on_rvm["reasons"]


def test_a_stewards_module_may_use_rego_the_rvm_cannot_compile(policy_copy: Path) -> None:
    # The tree-walking engine (and `fedgate policy test`) accepts walk; the RVM does not, and decides only
    # bundles of verified modules.
    (policy_copy / "decision" / "walked.rego").write_text(
        "package fedgate.decision\n\nimport rego.v1\n\n"
        "input_problems contains n if { walk(input, [_, n]); n == 1 }\n"
    )
    bundle = load_bundle(policy_copy, "DE")
    with pytest.raises(PolicySourceError, match=r"policies do not compile: .*walk"):
        build_vm(bundle)
    assert decide(EmbeddedEngine(bundle), DecisionInput.model_validate(REQUEST)).decision == "allow"


_LEAKING_COMPREHENSION = (
    "package fedgate.decision\n\nimport rego.v1\n\n"
    'input_problems contains "never" if {\n\tnever := {n | input.now == "never"; n := 1}\n'
    "\tcount(never) > 0\n}\n"
)


def test_the_rvm_run_to_completion_misreads_a_comprehension_condition_outside_its_loops() -> None:
    # Why build_vm refuses such conditions: in regorus 0.13 the comprehension's failed condition leaves it
    # open, and the failing `count(never) > 0` then resumes after the comprehension, over and over.
    program = regorus.Program.compile_from_modules("{}", [("d.rego", _LEAKING_COMPREHENSION)], [_PROBLEMS])
    vm = regorus.Rvm()
    vm.set_execution_mode(0)
    vm.load_program(program)
    vm.set_data_json("{}")
    vm.set_input_json('{"now": "2026-05-01T10:00:00Z"}')
    with pytest.raises(RuntimeError, match="exceeded maximum instruction limit"):
        vm.execute_entry_point(_PROBLEMS)
    assert comprehension_conditions(program) == [f"{_PROBLEMS} pc 8"]


def test_a_stewards_comprehension_condition_outside_its_loops_is_decided_by_the_tree_walking_engine(
    policy_copy: Path,
) -> None:
    (policy_copy / "decision" / "never.rego").write_text(_LEAKING_COMPREHENSION)
    bundle = load_bundle(policy_copy, "DE")
    misread = rf"the RVM would misread the conditions at {_PROBLEMS} pc \d+"
    with pytest.raises(PolicySourceError, match=misread):
        build_vm(bundle)
    assert decide(EmbeddedEngine(bundle), DecisionInput.model_validate(REQUEST)).decision == "allow"
