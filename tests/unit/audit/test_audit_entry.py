"""Entries: exact RFC 8785 bytes, the JSON domain limits, and who an actor may be."""

from __future__ import annotations

import json
import math
import re

import pytest
import rfc8785

from audit.entry import Actor, canonical, entry_bytes, format_time, prepare_event
from audit.errors import EntryError, PayloadError
from audit.events import identifier_problem
from audit.merkle import leaf_hash
from audit.notes import b64

DIGEST = "sha256:" + "0f" * 32


def test_spliced_entry_bytes_equal_rfc8785_of_the_whole_entry() -> None:
    event = prepare_event(
        "query.decided",
        Actor("r\u00e9searcher-\u00fc", "uni-\u6771\u4eac"),
        "req-1",
        {"query_hash": DIGEST, "decision": "deny", "reasons": ["DSA \u00a75 \"expired\" \\ clause"],
         "policy_bundle": DIGEST},
    )  # fmt: skip
    data = entry_bytes(event, index=7, origin_json=canonical("fedgate.example/x"), prev=b"\x01" * 32,
                       time="2026-01-02T03:04:05.000006Z")  # fmt: skip
    entry = json.loads(data)
    assert data == rfc8785.dumps(entry)
    assert entry["prev"] == b64(b"\x01" * 32)
    assert entry["index"] == 7 and entry["actor"] == {
        "org": "uni-\u6771\u4eac",
        "sub": "r\u00e9searcher-\u00fc",
    }
    assert b"\n" not in data
    assert leaf_hash(data) != leaf_hash(data + b" ")


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 2**53, -(2**53), {1: "x"}, {"a": {(1, 2): 3}}, {"a": object()}]
)
def test_values_outside_the_json_domain_are_refused(value: object) -> None:
    with pytest.raises(EntryError):
        canonical(value)


def test_largest_safe_integers_are_fine() -> None:
    assert canonical(2**53 - 1) == b"9007199254740991"
    assert canonical(-(2**53 - 1)) == b"-9007199254740991"


def test_nan_in_a_payload_is_refused_before_writing() -> None:
    with pytest.raises(EntryError):
        prepare_event("query.released", None, None, {"query_hash": DIGEST, "result_hash": DIGEST,
                                                    "dp_epsilon": math.nan})  # fmt: skip
    with pytest.raises(PayloadError):
        prepare_event("query.executed", None, None, {"query_hash": DIGEST, "dataset_digest": DIGEST,
                                                    "rows": 2**53})  # fmt: skip


@pytest.mark.parametrize(
    "sub",
    [
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "Bearer-abc",
        "a" * 60,
        "",
        " leading",
        "trailing ",
        "two  spaces",
        "line\nbreak",
        "end\n",
        "x" * 300,
        "tab\there",
        # What the payload filter refuses is refused in an actor too, with the same 32-character threshold.
        "alice@example.org",
        "123-45-6789",
        "4111111111111111",
        "ghp_" + "Q7w" * 12,
        "a" * 32,
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    ],
)
def test_actor_never_holds_a_token(sub: str) -> None:
    with pytest.raises(EntryError):
        Actor(sub, "uni-example")
    with pytest.raises(EntryError):
        Actor("researcher-1", sub)


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.org",
        "123-45-6789",
        "4111111111111111",
        "ghp_" + "Q7w" * 12,
        "x" * 33,
        "eyJhbGciOi.eyJz",
    ],
)
def test_an_actor_refuses_what_a_payload_label_refuses(value: str) -> None:
    assert identifier_problem(value) is not None
    with pytest.raises(EntryError) as caught:
        Actor(value, "uni-example")
    assert value not in str(caught.value)


def test_actor_accepts_ordinary_subjects() -> None:
    for sub in ("researcher-1", "schema-researcher", "steward-1", "local:alice", "dac-0001", "a" * 31):
        assert Actor(sub, "org-aphp").sub == sub
    assert Actor("researcher-1", "Example University").as_json()["org"] == "Example University"
    assert Actor("researcher-1", "dev-token:org-aphp").org == "dev-token:org-aphp"
    # The gateway's digest of a refused name is taken as it is, though its hex digits are an opaque run.
    assert Actor("sha256:" + "0123456789" * 3 + "ab", "org-aphp").sub.startswith("sha256:")


@pytest.mark.parametrize(
    "sub",
    ["alice@example.org", "123-45-6789", "4111111111111111", "ghp_" + "Q7w" * 12,
     "f47ac10b-58cc-4372-a567-0e02b2c3d479"],
)  # fmt: skip
def test_the_gateway_records_an_identifier_like_subject_by_its_digest(sub: str) -> None:
    from gateway.runtime import recordable_name

    recorded = recordable_name(sub)
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", recorded)
    assert Actor(recorded, recordable_name("alice@uni.example")).sub == recorded


def test_the_gateway_records_ordinary_subjects_as_they_are() -> None:
    from gateway.runtime import recordable_name

    for name in ("researcher-1", "schema-researcher", "steward-1", "Example University", "org-aphp"):
        assert recordable_name(name) == name


@pytest.mark.parametrize("rid", ["", " x", "a" * 65, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIi", "req id", "req-1\n"])
def test_bad_request_ids(rid: str) -> None:
    with pytest.raises(EntryError):
        prepare_event("auth.failed", None, rid, {"reason": "expired"})


def test_time_format_is_utc_with_microseconds() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
