"""The event-type registry: each type declares its payload fields; payloads are checked before writing.

Payloads carry decisions, reasons, counts and digests — never patient data or raw identifiers. A field that
should hold a digest accepts only `sha256:<64 hex>`; labels and free text reject values that look like
e-mail addresses, bearer tokens, JWTs, long digit runs (record numbers, phone numbers), long opaque
strings (keys, tokens) or pseudonym tokens. Unknown fields are rejected. Add a type with one
`register(EventType(...))`.
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audit.errors import PayloadError

_MAX_SAFE_INT = 2**53 - 1
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LABEL = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._:/-]{0,127}$")
_KEY_ID = re.compile(r"^fp:[0-9a-f]{16}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDENTIFIER_LIKE = (
    (re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+"), "an e-mail address"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"), "a JSON Web Token"),
    (re.compile(r"(?i)\bbearer\s+\S"), "a bearer token"),
    (re.compile(r"\d{6,}"), "a long digit run (a record, phone or account number)"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "a national identification number"),
    (re.compile(r"[A-Za-z0-9_+/=]{32,}"), "a long opaque string (a key, token or raw hash)"),
    # How fedgate spells a pseudonym token (and any UUID): 32 hex digits in groups, no run long enough above.
    (
        re.compile(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
        "a pseudonym token",
    ),
)


# Ontology terms (consent codes, diseases) carry long digit runs but identify no one.
_ONTOLOGY_TERM = re.compile(
    r"\b(DUO|MONDO|HP|OMIM|ORPHA|NCIT|EFO|DOID|SNOMEDCT|ICD10|ICD11):[0-9A-Z.]{1,16}\b"
)


@functools.lru_cache(maxsize=4096)
def identifier_problem(value: str) -> str | None:
    """What identifier or secret `value` looks like, or None when it looks harmless.

    Remembered per string: a gateway records the same labels and policy reasons over and over."""
    value = _ONTOLOGY_TERM.sub(" ", value)
    for pattern, what in _IDENTIFIER_LIKE:
        if pattern.search(value):
            return f"looks like {what}"
    return None


class FieldKind(ABC):
    """How one payload field is checked; `check` returns a problem or None."""

    name = "value"

    @abstractmethod
    def check(self, value: Any) -> str | None:
        """The problem with `value`, or None when it fits this kind."""


class Digest(FieldKind):
    name = "digest"

    def check(self, value: Any) -> str | None:
        if isinstance(value, str) and _DIGEST.match(value):
            return None
        return "must be a digest 'sha256:<64 lower-case hex>'"


class Label(FieldKind):
    """A short name of a non-person thing: dataset, DSA, policy, peer site, query kind."""

    name = "label"

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or not _LABEL.match(value):
            return "must be a label of letters, digits and . _ : / - (at most 128)"
        return identifier_problem(value)


class KeyId(FieldKind):
    """A key's public fingerprint as the store's catalog records it: `fp:` and 16 hex digits derived from
    the key, from which the key cannot be recovered. Not a label: its hex digits often run six long."""

    name = "key id"

    def check(self, value: Any) -> str | None:
        if isinstance(value, str) and _KEY_ID.match(value):
            return None
        return "must be a key id 'fp:<16 lower-case hex>'"


class Text(FieldKind):
    """A short human-readable sentence, such as the policy clause that decided a request."""

    name = "text"

    def __init__(self, max_len: int = 500) -> None:
        self.max_len = max_len

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
        if len(value) > self.max_len:
            return f"must be at most {self.max_len} characters"
        if _CONTROL.search(value):
            return "must not contain control characters"
        return identifier_problem(value)


class Enum(FieldKind):
    name = "enum"

    def __init__(self, *values: str) -> None:
        self.values = frozenset(values)

    def check(self, value: Any) -> str | None:
        if isinstance(value, str) and value in self.values:
            return None
        return f"must be one of {sorted(self.values)}"


class Count(FieldKind):
    name = "count"

    def check(self, value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SAFE_INT:
            return None
        return "must be a non-negative integer below 2^53"


class Number(FieldKind):
    name = "number"

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
        if abs(value) > _MAX_SAFE_INT:
            # Larger floats serialize as integer digits that a reader cannot hold exactly.
            return "must be within ±(2^53−1)"
        return None


class Flag(FieldKind):
    name = "bool"

    def check(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else "must be true or false"


class ListOf(FieldKind):
    name = "list"

    def __init__(self, item: FieldKind, max_items: int = 64) -> None:
        self.item = item
        self.max_items = max_items

    def check(self, value: Any) -> str | None:
        if not isinstance(value, list):
            return f"must be a list of {self.item.name}"
        if len(value) > self.max_items:
            return f"must have at most {self.max_items} items"
        for i, item in enumerate(value):
            problem = self.item.check(item)
            if problem:
                return f"item {i} {problem}"
        return None


DIGEST = Digest()
LABEL = Label()
KEY_ID = KeyId()
TEXT = Text()
COUNT = Count()
NUMBER = Number()
FLAG = Flag()
REASONS = ListOf(TEXT)
DECISION = Enum("allow", "deny", "needs_approval")


@dataclass(frozen=True)
class EventType:
    """One audited event: its name, what it records, and its payload fields."""

    name: str
    description: str
    required: Mapping[str, FieldKind] = field(default_factory=dict)
    optional: Mapping[str, FieldKind] = field(default_factory=dict)

    def validate(self, payload: Mapping[str, Any]) -> None:
        """Raise PayloadError on an unknown, missing or malformed field."""
        if not isinstance(payload, Mapping):
            raise PayloadError(self.name, None, "payload must be an object")
        for key in payload:
            if not isinstance(key, str):
                raise PayloadError(self.name, None, "payload keys must be strings")
            if key not in self.required and key not in self.optional:
                raise PayloadError(self.name, key, "unknown field")
        for key in self.required:
            if key not in payload:
                raise PayloadError(self.name, key, "required field is missing")
        for key, value in payload.items():
            kind = self.required.get(key) or self.optional[key]
            problem = kind.check(value)
            if problem:
                raise PayloadError(self.name, key, problem)


REGISTRY: dict[str, EventType] = {}


def register(event: EventType) -> EventType:
    """Add an event type; names are unique."""
    if event.name in REGISTRY:
        raise ValueError(f"event type {event.name} is already registered")
    overlap = set(event.required) & set(event.optional)
    if overlap:
        raise ValueError(f"{event.name}: fields both required and optional: {sorted(overlap)}")
    REGISTRY[event.name] = event
    return event


def event_type(name: str) -> EventType:
    """The registered type, or PayloadError for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise PayloadError(name, None, "unknown event type") from None


def validate_payload(name: str, payload: Mapping[str, Any]) -> None:
    """Check a payload against its event type's declaration."""
    event_type(name).validate(payload)


_STAGE = Enum(
    "validate", "authorize", "decide", "approval", "plan", "execute", "disclosure", "budget", "limit"
)

register(
    EventType(
        "query.received",
        "a query spec arrived and was parsed",
        required={"query_hash": DIGEST, "kind": LABEL, "dataset": LABEL, "dsa": LABEL},
        optional={"purpose": ListOf(LABEL), "coordinator": LABEL, "federated": FLAG},
    )
)
register(
    EventType(
        "query.decided",
        "the policy engine decided a query",
        required={"query_hash": DIGEST, "decision": DECISION, "reasons": REASONS, "policy_bundle": DIGEST},
        optional={"obligations": DIGEST, "engine": Enum("embedded", "opa")},
    )
)
register(
    EventType(
        "query.executed",
        "an approved query ran on the store",
        required={"query_hash": DIGEST, "dataset_digest": DIGEST},
        optional={"rows": COUNT, "duration_ms": NUMBER},
    )
)
register(
    EventType(
        "query.released",
        "an answer passed disclosure control and left the site",
        required={"query_hash": DIGEST, "result_hash": DIGEST},
        optional={"cells": COUNT, "suppressed": COUNT, "rounded_to": COUNT, "dp_epsilon": NUMBER},
    )
)
register(
    EventType(
        "query.refused",
        "a query was refused; the stage and the reasons say why",
        required={"stage": _STAGE, "reasons": REASONS},
        optional={"query_hash": DIGEST},
    )
)
register(
    EventType(
        "request.refused",
        "a request other than a query was refused (a steward, auditor or polling request, or no such route)",
        required={"route": LABEL, "refusal": LABEL},
        optional={"title": TEXT, "field": LABEL, "suppressed": COUNT},
    )
)
register(
    EventType(
        "ingest.published",
        "a pseudonymized dataset was published to the store",
        required={"dataset": LABEL, "dataset_digest": DIGEST, "rows": COUNT, "columns": COUNT},
        optional={
            "source_kind": LABEL,
            "min_k": COUNT,
            "suppressed_columns": COUNT,
            "k_threshold": COUNT,
            "k_override": FLAG,
            "spec_digest": DIGEST,
            "key_id": KEY_ID,
        },
    )
)
register(
    EventType(
        "ingest.refused",
        "an ingest was refused",
        required={"dataset": LABEL, "reasons": REASONS},
        optional={"source_kind": LABEL},
    )
)
register(
    EventType(
        "policy.changed",
        "a policy, DSA or policy data changed, was found at start-up not to be the last one recorded, or "
        "was put in force as the policy folder holds it by `fedgate policy reload`",
        required={
            "bundle_digest": DIGEST,
            "change": Enum("policy", "dsa", "data", "found_at_startup", "cli_reload"),
        },
        optional={"previous_digest": DIGEST, "name": LABEL},
    )
)
register(
    EventType(
        "key.changed",
        "a key was created, rotated or revoked",
        required={
            "key": Enum("log", "master", "peer", "linkage", "witness"),
            "action": Enum("created", "rotated", "revoked"),
        },
        optional={"fingerprint": DIGEST, "name": LABEL},
    )
)
register(
    EventType(
        "approval.decided",
        "a steward approved or rejected a query that policy sent to a human",
        required={"query_hash": DIGEST, "decision": Enum("approved", "rejected")},
        optional={"reasons": REASONS},
    )
)
register(
    EventType(
        "auth.failed",
        "authentication or authorization failed",
        required={"reason": LABEL},
        optional={"token_digest": DIGEST, "route": LABEL, "role": LABEL, "suppressed": COUNT},
    )
)
register(
    EventType(
        "peer.rejected",
        "a request from a peer gateway was rejected",
        required={"peer": LABEL, "reason": TEXT},
        optional={"request_digest": DIGEST, "suppressed": COUNT},
    )
)
register(
    EventType(
        "dev_token.issued",
        "an UnsafeDevToken was issued (dev mode, loopback only)",
        required={"roles": ListOf(LABEL), "expires_in_s": COUNT},
        optional={"subject_digest": DIGEST},
    )
)
register(
    EventType(
        "glm.iteration",
        "one Newton-Raphson step of a federated GLM ran at this site",
        required={
            "query_hash": DIGEST,
            "iteration": COUNT,
            "family": Enum("gaussian", "binomial", "poisson"),
        },
        optional={"parameters_digest": DIGEST, "rows": COUNT, "converged": FLAG},
    )
)

# The types declared above; other packages register their own (e.g. the gateway's consent events).
CORE_EVENT_TYPES = frozenset(REGISTRY)
