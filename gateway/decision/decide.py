"""Fail-closed decisions: whatever an engine does, the caller gets a Decision, and every failure denies."""

from __future__ import annotations

import json

from pydantic import ValidationError

from gateway.decision.bundle import first_line
from gateway.decision.engine import PolicyEngine
from gateway.decision.errors import MalformedDecision
from gateway.decision.models import Decision, DecisionInput


def parse_decision(result: object, expected_digest: str) -> Decision:
    """Check an engine's raw result against the decision schema and the bundle it should come from."""
    if not isinstance(result, dict):
        raise MalformedDecision(f"the policy answered a {type(result).__name__}, not a decision object")
    _check_digest(result.get("bundle_digest"), expected_digest)
    try:
        return Decision.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        raise MalformedDecision(f"the decision's {where} is malformed: {first['msg']}") from None


def parse_decision_json(result: str, expected_digest: str) -> Decision:
    """`parse_decision` for a result written as JSON text, validated from the text in one step (a third of
    the cost of reading it into Python objects first). A result that does not validate is read and checked
    as parse_decision does, so the error names what is wrong in the same words."""
    try:
        decision = Decision.model_validate_json(result)
    except ValidationError:
        return parse_decision(json.loads(result), expected_digest)
    _check_digest(decision.bundle_digest, expected_digest)
    return decision


def _check_digest(digest: object, expected_digest: str) -> None:
    if digest != expected_digest:
        shown = digest[:12] if isinstance(digest, str) and digest else "no bundle"
        raise MalformedDecision(
            f"the engine ran bundle {shown}, not the loaded bundle {expected_digest[:12]}"
        )


def decide(engine: PolicyEngine, request: DecisionInput) -> Decision:
    """The policy's decision for `request`; never raises: any failure is a deny naming what failed."""
    expected = ""
    try:
        expected = engine.bundle_digest
        # An engine that reads and answers JSON takes the model's own serialization (a fifth of the cost of
        # building the document and encoding it again) and its answer is validated from the text.
        evaluate_json = getattr(engine, "evaluate_json", None)
        if evaluate_json is not None:
            return parse_decision_json(evaluate_json(request.policy_input_json()), expected)
        return parse_decision(engine.evaluate(request.to_policy_input()), expected)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 — engine panics are BaseException, and every failure must deny
        return Decision.failed(first_line(exc), expected)
