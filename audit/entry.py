"""Audit entries as RFC 8785 canonical JSON: validation, canonicalization and the exact stored bytes.

An entry is the object {actor, index, origin, payload, prev, request_id, time, type}. Every value is
canonicalized by the `rfc8785` package; because RFC 8785 sorts keys and serializes each member's value
independently of its neighbours, the entry's bytes are the fixed, sorted key sequence with those
canonical values, which lets the writer canonicalize the payload before taking the log lock and only
splice in index, prev and time under it. A test checks the result equals `rfc8785.dumps(entry)`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

from audit.errors import EntryError
from audit.events import identifier_problem, validate_payload
from audit.notes import b64

GENESIS_PREV = bytes(32)
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# A request id is the gateway's 32 hex digits (or a peer's id for its request): only a run far longer than
# that reads as a credential there.
_TOKEN_LIKE = re.compile(r"(?i)eyJ[A-Za-z0-9_-]{4,}\.|\bbearer\b|[A-Za-z0-9_+/=]{48,}")
# What reads as a credential in a name beyond the payload filter's identifier patterns (`identifier_problem`):
# a JWT's first segment alone, and the word "bearer" however it is joined.
_CREDENTIAL_WORDS = re.compile(r"(?i)eyJ[A-Za-z0-9_-]{4,}\.|\bbearer\b")
# How the gateway names a caller whose own name the log refuses (gateway.runtime.recordable_name).
_NAME_DIGEST = re.compile(r"sha256:[0-9a-f]{32}")
# Printable, no whitespace but single spaces between words ("Example University"), at most 256 characters.
_ACTOR_FIELD = re.compile(r"(?=.{1,256}\Z)[^\s\x00-\x1f\x7f]+(?: [^\s\x00-\x1f\x7f]+)*")


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value; NaN, ±inf, integers beyond ±(2^53−1) and non-string keys fail."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise EntryError(f"value cannot be canonicalized (RFC 8785): {exc}") from None


@dataclass(frozen=True)
class Actor:
    """Who caused the event: the authenticated subject and their organisation — never a token.

    A name is refused when it reads as a credential or as an identifier the payload filter refuses
    (`audit.events.identifier_problem`); the gateway then records it as `sha256:` and 32 hex digits of its
    SHA-256, a form taken as it is.
    """

    sub: str
    org: str

    def __post_init__(self) -> None:
        for name in ("sub", "org"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ACTOR_FIELD.fullmatch(value):
                raise EntryError(
                    f"actor.{name} must be 1-256 printable characters, words apart by single spaces"
                )
            if _NAME_DIGEST.fullmatch(value):
                continue
            if _CREDENTIAL_WORDS.search(value):
                raise EntryError(f"actor.{name} looks like a token; record the subject, never a credential")
            # The payload filter's patterns and thresholds, so that no entry holds in its actor what it
            # would refuse in its payload (an e-mail address, a national id, a card number, a 32+ run).
            problem = identifier_problem(value)
            if problem is not None:
                raise EntryError(f"actor.{name} {problem}; record it by its digest")

    def as_json(self) -> dict[str, str]:
        return {"org": self.org, "sub": self.sub}


@dataclass(frozen=True)
class PreparedEvent:
    """An event validated and canonicalized outside the log lock; only index, prev and time are missing."""

    event_type: str
    type_json: bytes
    actor_json: bytes
    request_id_json: bytes
    payload_json: bytes


REQUEST_ID_RULE = "request_id must be 1-64 letters, digits and . _ : - (and not a token)"


def is_request_id(value: object) -> bool:
    """Whether the log takes `value` as an entry's request id (`REQUEST_ID_RULE`)."""
    return isinstance(value, str) and bool(_REQUEST_ID.fullmatch(value)) and not _TOKEN_LIKE.search(value)


def prepare_event(
    event_type: str, actor: Actor | None, request_id: str | None, payload: Mapping[str, Any]
) -> PreparedEvent:
    """Validate an event against the registry and canonicalize its parts."""
    validate_payload(event_type, payload)
    if request_id is not None and not is_request_id(request_id):
        raise EntryError(REQUEST_ID_RULE)
    if actor is not None and not isinstance(actor, Actor):
        raise EntryError("actor must be an Actor or None")
    return PreparedEvent(
        event_type=event_type,
        type_json=_canonical_string(event_type),
        actor_json=_canonical_actor(actor) if actor else b"null",
        request_id_json=canonical(request_id),
        payload_json=canonical(dict(payload)),
    )


# The event type and the actor recur on entry after entry, and RFC 8785 in pure Python costs more than a
# lookup: their canonical bytes are remembered.
@functools.lru_cache(maxsize=256)
def _canonical_string(value: str) -> bytes:
    return canonical(value)


@functools.lru_cache(maxsize=4096)
def _canonical_actor(actor: Actor) -> bytes:
    return canonical(actor.as_json())


def format_time(ts: float) -> str:
    """UTC RFC 3339 with microseconds, e.g. 2026-11-23T17:55:25.123456Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_bytes(event: PreparedEvent, *, index: int, origin_json: bytes, prev: bytes, time: str) -> bytes:
    """The canonical bytes of the complete entry (keys in RFC 8785 order)."""
    return b"".join((
        b'{"actor":', event.actor_json,
        b',"index":', str(index).encode(),
        b',"origin":', origin_json,
        b',"payload":', event.payload_json,
        b',"prev":"', b64(prev).encode(),
        b'","request_id":', event.request_id_json,
        b',"time":"', time.encode(),
        b'","type":', event.type_json,
        b"}",
    ))  # fmt: skip


def parse_entry(data: bytes) -> dict[str, Any]:
    """The entry's JSON object (for readers; the stored bytes stay authoritative)."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise EntryError("entry is not a JSON object")
    return value
