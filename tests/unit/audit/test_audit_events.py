"""The event-type registry: every required type exists, payloads are validated, identifiers stay out."""

from __future__ import annotations

from typing import Any

import pytest

from audit.errors import PayloadError
from audit.events import (
    DIGEST,
    LABEL,
    REGISTRY,
    EventType,
    Text,
    identifier_problem,
    register,
    validate_payload,
)
from pseudonymize.pseudonym import pseudonym

D = "sha256:" + "ab" * 32
VALID: dict[str, dict[str, Any]] = {
    "query.received": {"query_hash": D, "kind": "count", "dataset": "diabetes-2024", "dsa": "DSA-7",
                       "purpose": ["DUO:0000007"], "federated": True},
    "query.decided": {"query_hash": D, "decision": "needs_approval", "reasons": ["DSA-7 requires approval"],
                      "policy_bundle": D, "engine": "embedded"},
    "query.executed": {"query_hash": D, "dataset_digest": D, "rows": 1200, "duration_ms": 3.5},
    "query.released": {"query_hash": D, "result_hash": D, "cells": 12, "suppressed": 2, "dp_epsilon": 0.5},
    "query.refused": {"stage": "disclosure", "reasons": ["cell below 10"], "query_hash": D},
    "ingest.published": {"dataset": "diabetes-2024", "dataset_digest": D, "rows": 5000, "columns": 12},
    "ingest.refused": {"dataset": "diabetes-2024", "reasons": ["k-anonymity 3 below 5"]},
    "policy.changed": {"bundle_digest": D, "change": "dsa", "previous_digest": D, "name": "DSA-7"},
    "key.changed": {"key": "log", "action": "created", "fingerprint": D},
    "approval.decided": {"query_hash": D, "decision": "approved", "reasons": ["steward reviewed"]},
    "auth.failed": {"reason": "expired", "token_digest": D, "route": "/v1/query"},
    "peer.rejected": {"peer": "site-fr", "reason": "request signature does not verify"},
    "dev_token.issued": {"roles": ["researcher"], "expires_in_s": 3600},
    "glm.iteration": {"query_hash": D, "iteration": 3, "family": "binomial", "converged": False},
}  # fmt: skip


def test_every_required_event_type_is_registered_and_accepts_a_valid_payload() -> None:
    assert set(VALID) <= set(REGISTRY)
    for name, payload in VALID.items():
        validate_payload(name, payload)


@pytest.mark.parametrize("name", sorted(VALID))
def test_unknown_and_missing_fields_are_rejected(name: str) -> None:
    with pytest.raises(PayloadError, match="unknown field"):
        validate_payload(name, {**VALID[name], "patient_id": "x"})
    required = next(iter(REGISTRY[name].required))
    payload = dict(VALID[name])
    del payload[required]
    with pytest.raises(PayloadError, match="missing"):
        validate_payload(name, payload)


def test_unknown_event_type() -> None:
    with pytest.raises(PayloadError, match="unknown event type"):
        validate_payload("query.leaked", {})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("query_hash", "not-a-digest"),
        ("query_hash", "sha256:" + "AB" * 32),
        ("query_hash", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("query_hash", "MRN-123456789"),
        ("dataset", "patient.name@hospital.example"),
        ("dataset", "MRN-12345678"),
        ("dataset", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0"),
        ("dataset", "3f8a9c0d2b7e4f1a9c8d7e6f5a4b3c2d1e0f9a8b"),
        ("dataset", "123-45-6789"),
        ("dataset", "has space"),
        ("dsa", 7),
        ("purpose", "DUO:0000007"),
        ("purpose", ["ok", "+49 6221 5612345"]),
    ],
)
def test_identifier_like_or_ill_typed_values_are_rejected(field: str, value: object) -> None:
    payload = {**VALID["query.received"], field: value}
    with pytest.raises(PayloadError) as err:
        validate_payload("query.received", payload)
    assert err.value.field == field


@pytest.mark.parametrize(
    "reason",
    [
        "patient 1234567 was excluded",
        "contact jane.doe@example.org",
        "Bearer abc.def",
        "token " + "Zx9" * 12,
        "",
    ],
)
def test_reasons_cannot_carry_identifiers(reason: str) -> None:
    with pytest.raises(PayloadError):
        validate_payload("ingest.refused", {"dataset": "d1", "reasons": [reason]})


def test_pseudonym_tokens_are_rejected_in_labels_and_text_in_either_spelling() -> None:
    token = pseudonym(bytes(32), "MRN-DE-00000001")
    for value in (token, token.upper(), token.replace("-", "")):
        with pytest.raises(PayloadError) as err:
            validate_payload("query.received", {**VALID["query.received"], "dataset": value})
        assert err.value.field == "dataset"
        with pytest.raises(PayloadError):
            validate_payload("ingest.refused", {"dataset": "d1", "reasons": [f"patient {value} excluded"]})


def test_harmless_text_passes_the_identifier_check() -> None:
    for text in ["DSA-7 expired on 2025-01-01", "cell count 9 below minimum 10", "site-de", "10.0.0.1"]:
        assert identifier_problem(text) is None


@pytest.mark.parametrize(
    ("field", "value"), [("rows", -1), ("rows", True), ("rows", 1.5), ("duration_ms", "3")]
)
def test_numbers_are_typed(field: str, value: object) -> None:
    with pytest.raises(PayloadError):
        validate_payload("query.executed", {**VALID["query.executed"], field: value})


def test_the_registry_is_extended_with_one_declaration() -> None:
    event = EventType("test.extended", "a test-only event", required={"thing": LABEL}, optional={"d": DIGEST})
    register(event)
    try:
        validate_payload("test.extended", {"thing": "x", "d": D})
        with pytest.raises(ValueError, match="already registered"):
            register(event)
    finally:
        del REGISTRY["test.extended"]


@pytest.mark.parametrize("char", [*(chr(c) for c in range(0x20)), "\x7f"])
def test_text_refuses_every_control_character(char: str) -> None:
    with pytest.raises(PayloadError, match="control characters"):
        validate_payload("ingest.refused", {"dataset": "d1", "reasons": [f"cell{char}below 10"]})


@pytest.mark.parametrize(
    "text", ["cell below 10", "über 10 Zellen", "\x80 and \u2028 are no C0 controls", "≥ 10"]
)
def test_text_takes_printable_characters_of_any_script_and_only_them(text: str) -> None:
    assert Text().check(text) is None
    assert Text().check(text + "\x1f") == "must not contain control characters"
