"""decide(): typed answers from the embedded engine, and a deny for every way evaluation can fail."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import regorus
from policy_helpers import policy_settings
from pydantic import ValidationError

from gateway.decision import (
    ConsentFilter,
    Decision,
    DecisionInput,
    PolicyBundle,
    PolicyDataError,
    PolicyDecisionPoint,
    decide,
    embedded,
    load_bundle,
)
from gateway.decision.embedded import EmbeddedEngine, build_engine, build_vm, evaluate_rule, evaluate_vm

POLICIES = Path(__file__).resolve().parents[3] / "policies"

REQUEST: dict[str, Any] = {
    "requester": {"sub": "r-1", "org": "org-aphp", "country": "FR", "roles": ["researcher"]},
    "purpose": {"duo": ["DUO:0000006"], "ethics_approval_id": "EC-2026-077"},
    "dsa": "DSA-2026-014",
    "dataset": {
        "id": "ds-diabetes-de",
        "jurisdiction": "DE",
        "duo": ["DUO:0000042"],
        "columns": ["age_band", "sex", "bmi", "hba1c", "outcome"],
    },
    "query": {"kind": "count", "columns": ["sex"], "group_by": ["age_band"]},
    "destination": {"country": "FR"},
    "now": "2026-05-01T10:00:00Z",
}


def _request(**changes: Any) -> DecisionInput:
    doc = json.loads(json.dumps(REQUEST))
    for key, value in changes.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    return DecisionInput.model_validate(doc)


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle(POLICIES, "DE")


@pytest.fixture(scope="module")
def engine(bundle: PolicyBundle) -> EmbeddedEngine:
    return EmbeddedEngine(bundle)


def test_allow_with_typed_obligations(engine: EmbeddedEngine, bundle: PolicyBundle) -> None:
    decision = decide(engine, _request())
    assert decision.decision == "allow" and decision.allowed
    assert decision.bundle_digest == bundle.digest
    ob = decision.obligations
    assert ob is not None
    assert (ob.min_cell_count, ob.round_to, ob.max_identical_queries, ob.dp) == (20, 5, 10, None)
    assert ob.allowed_columns == ("age_band", "bmi", "hba1c", "outcome", "sex")
    assert ob.consent_filter.require_any_of == (("DUO:0000004", "DUO:0000006", "DUO:0000042"),)


def test_expired_agreement_is_denied_in_the_stewards_words(engine: EmbeddedEngine) -> None:
    decision = decide(engine, _request(now="2026-07-01T00:00:00Z"))
    assert decision.decision == "deny"
    assert decision.reasons == ("DSA-2026-014 expired on 2026-06-30",)
    assert decision.obligations is None


def test_glm_needs_a_stewards_approval(engine: EmbeddedEngine) -> None:
    decision = decide(engine, _request(query={"kind": "glm"}))
    assert decision.decision == "needs_approval" and not decision.allowed
    assert decision.reasons == ("DSA-2026-014 requires a steward's approval for glm queries",)


def test_dp_agreement_gives_dp_obligation(engine: EmbeddedEngine) -> None:
    request = _request(
        requester={"org": "org-pharmaco", "country": "DE"},
        purpose={"duo": ["DUO:0000007"], "disease": "MONDO:0007254", "ethics_approval_id": None},
        dsa="DSA-2026-021",
        dataset={
            "id": "ds-oncology-de",
            "duo": ["DUO:0000007"],
            "diseases": ["MONDO:0004992"],
            "columns": ["stage", "survival_days", "event"],
        },
        query={"kind": "kaplan_meier", "columns": ["survival_days"], "group_by": ["stage"]},
        destination={"country": "DE"},
    )
    decision = decide(engine, request)
    assert decision.decision == "allow", decision.reasons
    assert decision.obligations is not None and decision.obligations.dp is not None
    assert decision.obligations.dp.epsilon == 0.5
    assert decision.obligations.min_cell_count == 15


class _Raising:
    name = "broken"
    bundle_digest = "d" * 64

    def __init__(self, error: BaseException | None = None, result: object = None) -> None:
        self.error, self.result = error, result

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        if self.error is not None:
            raise self.error
        return self.result

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        raise NotImplementedError


class _RaisingJson(_Raising):
    """The same answers as JSON text, which decide() validates from the text, as the embedded engine's."""

    def evaluate_json(self, policy_input: str) -> str:
        return json.dumps(self.evaluate(json.loads(policy_input)))


class _Panic(BaseException):
    """Stands for pyo3_runtime.PanicException, which derives from BaseException."""


_ALLOW = {
    "decision": "allow",
    "reasons": ["ok"],
    "obligations": None,
    "bundle_digest": "d" * 64,
}


@pytest.mark.parametrize(
    ("engine_under_test", "fragment"),
    [
        (_Raising(RuntimeError("engine exploded\n\nStack backtrace:\n 0: x")), "engine exploded"),
        (_Raising(_Panic("rust panicked")), "rust panicked"),
        (_Raising(result="<undefined>"), "not a decision object"),
        (_Raising(result=["allow"]), "a list, not a decision object"),
        (_Raising(result={"decision": "allow", "bundle_digest": "d" * 64}), "reasons"),
        (_Raising(result={**_ALLOW, "decision": "yes"}), "decision"),
        (_Raising(result=_ALLOW), "allow must carry obligations"),
        (_Raising(result={**_ALLOW, "bundle_digest": "e" * 64}), "not the loaded bundle dddddddddddd"),
        (_Raising(result={**_ALLOW, "decision": "deny", "reasons": []}), "must carry the clause"),
    ],
)
def test_every_failure_denies(engine_under_test: _Raising, fragment: str) -> None:
    decision = decide(engine_under_test, _request())
    assert decision.decision == "deny"
    assert decision.obligations is None
    assert decision.reasons[0].startswith("policy evaluation failed: ")
    assert fragment in decision.reasons[0]
    assert "Stack backtrace" not in decision.reasons[0]
    assert decide(_RaisingJson(engine_under_test.error, engine_under_test.result), _request()) == decision


def test_keyboard_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        decide(_Raising(KeyboardInterrupt()), _request())


class _SharedAcrossThreads:
    """Misuses one regorus engine from another thread, which makes regorus panic (a BaseException)."""

    name = "misused"

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle_digest = bundle.digest
        self._engine = build_engine(bundle)

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        self._engine.set_input(dict(policy_input))
        return evaluate_rule(self._engine)

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        raise NotImplementedError


class _VmSharedAcrossThreads:
    """Misuses one RVM from another thread, which makes regorus panic (a BaseException)."""

    name = "misused-vm"

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle_digest = bundle.digest
        self._vm = build_vm(bundle)

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        return json.loads(evaluate_vm(self._vm, json.dumps(dict(policy_input))))

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        raise NotImplementedError


@pytest.mark.parametrize("misused_engine", [_SharedAcrossThreads, _VmSharedAcrossThreads])
def test_real_engine_panic_denies(
    bundle: PolicyBundle, misused_engine: Callable[[PolicyBundle], Any]
) -> None:
    misused = misused_engine(bundle)
    out: list[Decision] = []
    thread = threading.Thread(target=lambda: out.append(decide(misused, _request())))
    thread.start()
    thread.join()
    assert out[0].decision == "deny"
    assert out[0].reasons[0].startswith("policy evaluation failed")
    assert "unsendable" in out[0].reasons[0]


def test_a_request_past_the_rvm_instruction_limit_is_decided_without_it(
    bundle: PolicyBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No shipped request reaches the limit; a VM that reports it stands in for one that did (the message
    # is regorus 0.13's).
    expected = decide(EmbeddedEngine(bundle), _request())
    assert expected.decision == "allow"

    def over_the_limit(vm: object, policy_input: str) -> str:
        raise RuntimeError(
            "Execution stopped: exceeded maximum instruction limit of 25000 after 25000 instructions"
        )

    monkeypatch.setattr(embedded, "evaluate_vm", over_the_limit)
    assert decide(EmbeddedEngine(bundle), _request()) == expected

    def broken(vm: object, policy_input: str) -> str:
        raise RuntimeError("type mismatch")

    monkeypatch.setattr(embedded, "evaluate_vm", broken)
    failed = decide(EmbeddedEngine(bundle), _request())
    assert failed.decision == "deny" and failed.reasons[0].startswith("policy evaluation failed")


def test_a_real_rvm_stops_at_its_instruction_limit_with_the_message_the_engine_expects() -> None:
    source = "package t\nimport rego.v1\nr := count([x | some x in numbers.range(1, 50000); x > 0])\n"
    program = regorus.Program.compile_from_modules("{}", [("t.rego", source)], ["data.t.r"])
    vm = regorus.Rvm()
    vm.load_program(program)
    vm.set_data_json("{}")
    vm.set_input_json("{}")
    with pytest.raises(RuntimeError, match=embedded._INSTRUCTION_LIMIT):
        vm.execute_entry_point("data.t.r")


def test_engines_are_per_thread_and_agree(engine: EmbeddedEngine) -> None:
    requests = [_request(), _request(now="2026-07-01T00:00:00Z"), _request(query={"kind": "glm"})]
    expected = [decide(engine, r) for r in requests]
    results: dict[int, list[Decision]] = {}

    def work(n: int) -> None:
        results[n] = [decide(engine, r) for r in requests * 5]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected * 5 for r in results.values())


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"now": "2026-07-01T00:00:00.250+02:00"},
        {
            "query": {
                "kind": "summary",
                "columns": ["bmi"],
                "filters": {"column": "bmi", "op": ">", "value": 27.5e-3},
            }
        },
        {"purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0005148", "ethics_approval_id": None}},
    ],
)
def test_the_json_engines_read_is_the_document_the_others_read(changes: dict[str, Any]) -> None:
    request = _request(**changes)
    assert json.loads(request.policy_input_json()) == request.to_policy_input()


def test_input_model_names_bad_fields() -> None:
    doc = json.loads(json.dumps(REQUEST))
    doc["destination"]["country"] = "Germany"
    with pytest.raises(ValidationError, match=r"destination\.country"):
        DecisionInput.model_validate(doc)
    doc = json.loads(json.dumps(REQUEST))
    doc["now"] = "2026-05-01T10:00:00"
    with pytest.raises(ValidationError, match="now"):
        DecisionInput.model_validate(doc)


@pytest.mark.parametrize(
    ("codes", "withdrawn", "admitted"),
    [
        ("DUO:0000042", False, True),
        ("DUO:0000006 DUO:0000045", False, True),
        ("DUO:0000042", True, False),
        ("DUO:0000042", None, False),
        (None, False, False),
        ("", False, False),
        ("DUO:0000011", False, False),
        ("DUO:0000042 DUO:0000029", False, False),
        ("DUO:0000042 DUO:9999999", False, False),
    ],
)
def test_consent_filter_reference_semantics(
    codes: str | None, withdrawn: bool | None, admitted: bool
) -> None:
    f = ConsentFilter(
        withdrawn_column="consent_withdrawn",
        consent_column="consent_duo",
        separator=" ",
        require_any_of=(("DUO:0000004", "DUO:0000006", "DUO:0000042"),),
        allowed_codes=("DUO:0000004", "DUO:0000006", "DUO:0000042", "DUO:0000011", "DUO:0000045"),
    )
    assert f.admits(codes, withdrawn) is admitted


def test_reload_keeps_the_last_good_bundle(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    point = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    good = point.bundle.digest
    agreements = folder / "data" / "agreements.json"
    doc = json.loads(agreements.read_text())
    doc["DSA-2026-014"]["not_after"] = "2026-13-01"
    agreements.write_text(json.dumps(doc))
    with pytest.raises(PolicyDataError, match=r"DSA-2026-014\.not_after"):
        point.reload()
    assert point.bundle.digest == good
    assert point.decide(_request()).decision == "allow"

    doc["DSA-2026-014"]["not_after"] = "2026-04-30"
    agreements.write_text(json.dumps(doc))
    assert point.reload().digest != good
    decision = point.decide(_request())
    assert decision.reasons == ("DSA-2026-014 expired on 2026-04-30",)
    assert decision.bundle_digest == point.bundle.digest


def test_gateway_refuses_to_start_on_invalid_policies(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "data" / "organisations.json").write_text('{"org-x": {"name": "X", "country": "XX"}}')
    with pytest.raises(PolicyDataError, match=r"organisations\.json"):
        PolicyDecisionPoint(policy_settings(folder, tmp_path))
