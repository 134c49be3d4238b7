"""The shipped policies on a real OPA engine: the OPA-server engine path decides the whole corpus as the
embedded engine does, and every Rego test rule passes on OPA as `fedgate policy test` proves it on regorus.

The OPA is FEDGATE_TEST_OPA_URL's server when set, else OPA's own Go evaluator behind a loopback front
(`real_opa.OpaLibraryDataApi`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from decision_corpus import corpus
from real_opa import MISSING, OpaLibraryDataApi, opa_bindings, real_opa_url, upload_policies

from gateway.decision import DecisionInput, PolicyBundle, PolicyEngineUnavailable, decide, load_bundle
from gateway.decision.bundle import is_test_file
from gateway.decision.embedded import EmbeddedEngine, build_engine
from gateway.decision.opa_server import OpaServerEngine
from gateway.decision.rego_tests import RegoTest, discover_tests

POLICIES = Path(__file__).resolve().parents[2] / "policies"
# corpus(n) is a prefix of corpus(m) for n < m: this covers the 250 requests the other parity and golden
# tests use, and more.
CORPUS_SIZE = 1000

# On OPA, `not f(x)` is undefined (so the rule body fails) when x is undefined, where regorus makes it true;
# the policies read optional fields through object.get defaults so that both engines deny such requests.


def _missing_consent_field(policy_input: dict[str, Any]) -> bool:
    """A request that consent.rego must deny because an optional field it needs is missing."""
    purpose, dataset = policy_input.get("purpose", {}), policy_input.get("dataset", {})
    duo = set(dataset.get("duo", []))
    return (
        ("DUO:0000007" in purpose.get("duo", []) and not isinstance(purpose.get("disease"), str))
        or ("DUO:0000024" in duo and "moratorium_until" not in dataset)
        or ("DUO:0000025" in duo and "use_until" not in dataset)
    )


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle(POLICIES, "DE", include_tests=True)


@pytest.fixture(scope="module")
def opa_url() -> Iterator[str]:
    with real_opa_url() as url:
        yield url


def _policy_ids(bundle: PolicyBundle, *, tests: bool) -> dict[str, str]:
    """Policies under the ids OpaServerEngine.publish gives them (fedgate/<path>)."""
    return {f"fedgate/{path}": source for path, source in bundle.policies if is_test_file(path) == tests}


@pytest.fixture(scope="module")
def opa(opa_url: str, bundle: PolicyBundle) -> OpaServerEngine:
    """The product's OPA-server engine, with the bundle published to the real OPA by publish()."""
    return OpaServerEngine(opa_url, 10.0, bundle)


@pytest.fixture(scope="module")
def answers(opa: OpaServerEngine, bundle: PolicyBundle) -> list[tuple[DecisionInput, Any, Any]]:
    """(request, embedded decision, real-OPA decision) for every request of the corpus."""
    embedded = EmbeddedEngine(bundle)
    return [(i, decide(embedded, i), decide(opa, i)) for i in corpus(CORPUS_SIZE)]


def test_real_opa_decides_like_the_embedded_engine_on_the_corpus(answers: list[Any]) -> None:
    compared = answers
    mismatches = [request.model_dump_json() for request, local, remote in compared if remote != local]
    assert mismatches == []
    kinds = {local.decision for _, local, _ in compared}
    assert kinds == {"allow", "deny", "needs_approval"}
    failed = [
        r for _, _, remote in compared for r in remote.reasons if r.startswith("policy evaluation failed")
    ]
    assert failed == []


def test_real_opa_denies_like_the_embedded_engine_when_a_consent_field_is_missing(
    answers: list[Any],
) -> None:
    missing = [a for a in answers if _missing_consent_field(a[0].to_policy_input())]
    assert missing
    for request, local, remote in missing:
        assert local.decision == "deny", request.model_dump_json()
        assert remote == local, request.model_dump_json()


def test_publishing_to_a_fresh_opa_succeeds(bundle: PolicyBundle) -> None:
    if opa_bindings is None:
        pytest.skip(MISSING)
    with OpaLibraryDataApi() as fresh:
        engine = OpaServerEngine(fresh.url, 10.0, bundle)
        assert decide(engine, corpus(1)[0]).bundle_digest == bundle.digest


def test_real_opa_reports_the_bundle_digest(opa: OpaServerEngine, bundle: PolicyBundle) -> None:
    decision = decide(opa, corpus(1)[0])
    assert not any(r.startswith("policy evaluation failed") for r in decision.reasons)
    assert decision.bundle_digest == bundle.digest


def test_real_opa_refuses_a_bundle_that_does_not_compile(opa_url: str, bundle: PolicyBundle) -> None:
    # Parses, but OPA's type checker rejects the call of an undefined function when compiling.
    broken = (("zz_broken.rego", "package fedgate.zz_broken\n\nx := no_such_function(1)\n"),)
    other = PolicyBundle(bundle.root, "DE", bundle.policies + broken, bundle.data, "not-published")
    with pytest.raises(PolicyEngineUnavailable, match="rejected the bundle"):
        OpaServerEngine(opa_url, 10.0, other)


def test_the_engine_behind_the_url_is_opa_not_regorus(opa_url: str) -> None:
    # OPA makes a negation over an undefined function argument undefined; a stand-in running regorus
    # answers true.
    source = (
        "package fedgate_probe\n\nnegated if not is_string(input.missing)\n\nplain if not input.missing\n"
    )
    with httpx.Client(base_url=opa_url, timeout=10) as client:
        client.put("/v1/policies/fedgate_probe.rego", content=source).raise_for_status()
        negated = client.post("/v1/data/fedgate_probe/negated", json={"input": {}})
        plain = client.post("/v1/data/fedgate_probe/plain", json={"input": {}})
        client.delete("/v1/policies/fedgate_probe.rego")
    assert negated.json() == {}
    assert plain.json() == {"result": True}


# --- the policies' own tests, as `opa test policies/` runs them --------------------------------------------


def _rego_tests() -> list[RegoTest]:
    return discover_tests(build_engine(load_bundle(POLICIES, "DE", include_tests=True)))


def _rego_test_params() -> list[Any]:
    return [pytest.param(t, id=f"{t.file}::{t.name}") for t in _rego_tests()]


def test_every_test_rule_written_is_discovered() -> None:
    written = {
        (path.relative_to(POLICIES).as_posix(), name)
        for path in POLICIES.rglob("*.rego")
        if is_test_file(path)
        for name in re.findall(r"^(test_\w+)", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    }
    assert {(t.file, t.name) for t in _rego_tests()} == written
    assert len(written) >= 50


@pytest.fixture(scope="module")
def opa_with_tests(opa: OpaServerEngine, opa_url: str, bundle: PolicyBundle) -> Iterator[httpx.Client]:
    """The real OPA with the test twins uploaded next to the published policies."""
    with httpx.Client(base_url=opa_url, timeout=30) as client:
        upload_policies(client, _policy_ids(bundle, tests=True))
        yield client


@pytest.mark.parametrize("test", _rego_test_params())
def test_policy_test_passes_on_real_opa(opa_with_tests: httpx.Client, test: RegoTest) -> None:
    # No input, as `opa test` leaves it: each test rule supplies its own with `with input as`.
    answer = opa_with_tests.post(f"/v1/data/{test.package.replace('.', '/')}/{test.name}", json={})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"result": True}, f"{test.file}:{test.line} {test.rule}"


def test_a_function_renamed_across_modules_publishes_and_a_failed_publish_is_retried(
    bundle: PolicyBundle,
) -> None:
    if opa_bindings is None:
        pytest.skip(MISSING)
    policies = tuple((p, s) for p, s in bundle.policies if not is_test_file(p))
    assert any("valid_date(" in s for p, s in policies if p.startswith("lib/"))
    assert any("lib.valid_date(" in s for p, s in policies if not p.startswith("lib/"))
    # The library's function and its callers in other modules change together: neither the new library
    # nor a new caller compiles against the old other half.
    renamed = tuple((p, s.replace("valid_date(", "is_iso_date(")) for p, s in policies)
    after = PolicyBundle(bundle.root, "DE", renamed, bundle.data, "renamed-digest")
    broken = PolicyBundle(
        bundle.root,
        "DE",
        (*renamed, ("zz.rego", "package fedgate.zz\n\nx := no_such(1)\n")),
        bundle.data,
        "x",
    )
    with OpaLibraryDataApi() as fresh:
        engine = OpaServerEngine(fresh.url, 10.0, bundle)
        engine.replace_bundle(after)
        assert engine.in_sync and decide(engine, corpus(1)[0]) == decide(EmbeddedEngine(after), corpus(1)[0])
        with pytest.raises(PolicyEngineUnavailable):
            engine.replace_bundle(broken)
        assert not engine.in_sync, "a failed publish leaves OPA out of step until the next one succeeds"
        engine.replace_bundle(after)
        assert engine.in_sync and fresh.policy_ids() == sorted(f"fedgate/{p}" for p, _ in renamed)
