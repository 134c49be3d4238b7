"""The lookup tables the loader derives change no decision: the policies' own fallback answers the same."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from decision_golden import bench_bundle_and_requests, corpus_requests

from gateway.decision import DecisionInput, PolicyBundle, PolicySourceError, decide, load_bundle
from gateway.decision.bundle import POLICY_TABLES
from gateway.decision.embedded import EmbeddedEngine, TreeWalkingEngine, build_engine, evaluate_rule

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def _without_derived(bundle: PolicyBundle) -> PolicyBundle:
    """The same bundle (and digest) with no derived tables: every rule computes them itself, as in tests."""
    data = {k: v for k, v in bundle.data.items() if k != "derived"}
    return dataclasses.replace(bundle, data=data)


def test_loader_tables_are_what_the_policies_compute() -> None:
    bundle = load_bundle(POLICIES, "DE")
    engine = build_engine(_without_derived(bundle))
    engine.set_input({})
    for name, rule in POLICY_TABLES.items():
        assert bundle.data["derived"][name] == evaluate_rule(engine, rule), name
    assert bundle.data["derived"]["agreement_limits"].keys() == bundle.data["agreements"].keys()


def test_ancestor_tables_match_the_graph_the_policies_walk() -> None:
    bundle = load_bundle(POLICIES, "DE")
    engine = build_engine(_without_derived(bundle))
    engine.set_input({})
    for table in ("duo_ancestors", "disease_ancestors"):
        walked: dict[str, Any] = evaluate_rule(engine, f"data.fedgate.lib.{table}")  # type: ignore[assignment]
        assert {k: sorted(v) for k, v in walked.items()} == bundle.data["derived"][table], table


def test_corpus_decides_the_same_with_and_without_derived_tables() -> None:
    bundle = load_bundle(POLICIES, "DE")
    with_tables, without = EmbeddedEngine(bundle), EmbeddedEngine(_without_derived(bundle))
    for request in corpus_requests():
        assert decide(with_tables, request) == decide(without, request), request.model_dump_json()


def test_benchmark_mix_decides_the_same_with_and_without_derived_tables() -> None:
    # Without the tables, each decision computes them for all 200 agreements: more than the RVM's limit of
    # 25,000 instructions per evaluation (why the loader derives them), so that side runs tree-walking.
    bundle, requests = bench_bundle_and_requests()
    with_tables, without = EmbeddedEngine(bundle), TreeWalkingEngine(_without_derived(bundle))
    for raw in requests[::4]:
        request = DecisionInput.model_validate(raw)
        assert decide(with_tables, request) == decide(without, request), request.model_dump_json()


def test_a_table_rule_that_fails_refuses_the_bundle(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    agreement = policies / "agreement" / "agreement.rego"
    source = agreement.read_text()
    assert "agreement_limits := {id: limits(dsa)" in source
    # A table whose evaluation raises on the embedded engine (a built-in error) must stop the load.
    agreement.write_text(
        source.replace("agreement_limits := {id: limits(dsa)", 'agreement_limits := {id: to_number("x")')
    )
    with pytest.raises(PolicySourceError, match="agreement_limits does not evaluate"):
        load_bundle(policies, "DE")
