"""`check_releases` and `fedgate audit verify`'s second pass: every release an export records was allowed
by its decision (or a steward's approval), and every entry is the canonical JSON the log writes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from audit_helpers import ORIGIN, digest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from audit import export_format
from audit.entry import Actor
from audit.errors import AuditIntegrityError
from audit.log import AuditLog
from audit.notes import verifier_key_text
from audit.verify import check_releases
from gateway.cli import app

ACTOR = Actor("researcher-1", "uni-example")
STEWARD = Actor("steward-1", "uni-example")
H1, H2 = digest("query one"), digest("query two")

Event = tuple[str, str, dict[str, Any], Actor | None]


def decided(request: str, query_hash: str, decision: str, actor: Actor | None = ACTOR) -> Event:
    payload = {"query_hash": query_hash, "decision": decision, "reasons": ["clause 4"],
               "policy_bundle": digest("bundle")}  # fmt: skip
    return "query.decided", request, payload, actor


def released(request: str, query_hash: str, actor: Actor | None = ACTOR) -> Event:
    return "query.released", request, {"query_hash": query_hash, "result_hash": digest(request)}, actor


def approval(request: str, query_hash: str, verdict: str, actor: Actor | None = STEWARD) -> Event:
    return "approval.decided", request, {"query_hash": query_hash, "decision": verdict}, actor


def refused(request: str, stage: str = "disclosure") -> Event:
    return "query.refused", request, {"stage": stage, "reasons": ["too small"]}, ACTOR


def opened(request: str, query_hash: str, actor: Actor | None = ACTOR) -> Event:
    payload = {"query_hash": query_hash, "session": digest("s"), "parameters": 2}
    return "glm.session_opened", request, payload, actor


def iteration(request: str, query_hash: str) -> Event:
    return "glm.iteration", request, {"query_hash": query_hash, "iteration": 1, "family": "gaussian"}, ACTOR


def exported(tmp_path: Path, events: list[Event]) -> tuple[Path, str]:
    """A real log holding `events`, exported and signed: the chain is intact whatever the events say."""
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(f"sqlite:///{tmp_path / 'log.db'}", ORIGIN, key, checkpoint_interval_s=None) as log:
        for kind, request, payload, actor in events:
            log.append(kind, actor=actor, request_id=request, payload=payload)
        log.checkpoint()
        log.export(tmp_path / "log.export")
    return tmp_path / "log.export", verifier_key_text(ORIGIN, key.public_key())


# The same researcher collecting with a token of another organisation: the gateway tells callers apart by
# subject, and decides and releases each collect under the principal who collects.
ELSEWHERE = Actor("researcher-1", "uni-elsewhere")
ALLOWED = [
    [decided("r1", H1, "allow"), released("r1", H1)],
    [decided("r1", H1, "needs_approval"), approval("r1", H1, "approved"), released("r1", H1)],
    [decided("r1", H1, "allow"), opened("r1", H1), iteration("r2", H1), iteration("r3", H1)],
    [decided("r1", H1, "deny"), refused("r1"), decided("r2", H2, "allow"), released("r2", H2)],
    # An approved answer collected twice: each collect is decided again before it is released again, and a
    # collect refused (a withdrawal since) does not keep a later one from being released.
    [
        decided("r1", H1, "needs_approval"),
        approval("r1", H1, "approved"),
        decided("r1", H1, "needs_approval"),
        released("r1", H1),
        decided("r1", H1, "needs_approval"),
        released("r1", H1),
        decided("r1", H1, "needs_approval"),
        refused("r1"),
        decided("r1", H1, "needs_approval", ELSEWHERE),
        released("r1", H1, ELSEWHERE),
    ],
    # An approved answer the site could not store: released, refused after it, back with the stewards, and
    # approved again (gateway.pipeline.QueryPipeline._not_stored).
    [
        decided("r1", H1, "needs_approval"),
        approval("r1", H1, "approved"),
        decided("r1", H1, "needs_approval"),
        released("r1", H1),
        refused("r1", "approval"),
        approval("r1", H1, "approved"),
        decided("r1", H1, "needs_approval"),
        released("r1", H1),
    ],
    # The approved run released (the policy allowing it by then), then a collect refused as out of date
    # (`_still_current`) and a later one released: the approval's first release had happened, so the
    # refusal ended only that collect.
    [
        decided("r1", H1, "needs_approval"),
        approval("r1", H1, "approved"),
        decided("r1", H1, "allow"),
        released("r1", H1),
        decided("r1", H1, "needs_approval"),
        refused("r1", "decide"),
        decided("r1", H1, "needs_approval"),
        released("r1", H1),
    ],
    # Two requests of one researcher and one steward, interleaved.
    [
        decided("r1", H1, "needs_approval"),
        decided("r2", H2, "needs_approval", STEWARD),
        approval("r1", H1, "approved"),
        approval("r2", H2, "approved", ACTOR),
        released("r2", H2, STEWARD),
        released("r1", H1),
    ],
]
NOT_ALLOWED = [
    ([released("r1", H1)], "no query.decided before it"),
    ([decided("r1", H1, "deny"), released("r1", H1)], "decided 'deny'"),
    ([decided("r1", H1, "allow"), released("r1", H2)], "another query hash"),
    ([decided("r1", H1, "needs_approval"), released("r1", H1)], "no steward approved it"),
    ([decided("r1", H1, "needs_approval"), approval("r1", H1, "rejected"), released("r1", H1)], "no steward"),
    ([decided("r1", H1, "needs_approval"), approval("r1", H2, "approved"), released("r1", H1)], "no steward"),
    ([decided("r1", H1, "allow"), released("r1", H1), released("r1", H1)], "no release or refusal"),
    ([decided("r1", H1, "allow"), refused("r1"), released("r1", H1)], "no release or refusal"),
    ([decided("r2", H1, "allow"), released("r1", H1)], "no query.decided before it"),
    ([decided("r1", H1, "deny"), opened("r1", H1)], "decided 'deny'"),
    ([decided("r1", H1, "allow"), opened("r1", H1), iteration("r2", H2)], "no session was opened"),
    # A rejection cancels the approval before it, even when the request is decided again.
    (
        [
            decided("r1", H1, "needs_approval"),
            approval("r1", H1, "approved"),
            approval("r1", H1, "rejected"),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
        ],
        "did not approve it",
    ),
    # An approved run refused before it released anything ends the approval: the request is decided again
    # with no steward approving it again.
    (
        [
            decided("r1", H1, "needs_approval"),
            approval("r1", H1, "approved"),
            decided("r1", H1, "deny"),
            refused("r1", "decide"),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
        ],
        "a refusal ended its approval before anything it approved was released",
    ),
    (
        [
            decided("r1", H1, "needs_approval"),
            approval("r1", H1, "approved"),
            decided("r1", H1, "needs_approval"),
            refused("r1", "disclosure"),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
        ],
        "a refusal ended its approval before anything it approved was released",
    ),
    # An approved answer not stored goes back to the stewards: it needs a second approval, even though the
    # first one's run was released.
    (
        [
            decided("r1", H1, "needs_approval"),
            approval("r1", H1, "approved"),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
            refused("r1", "approval"),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
        ],
        "a refusal at stage approval ended its approval",
    ),
    # An approval approves the needs_approval decision it follows, never one written after it.
    (
        [approval("r1", H1, "approved"), decided("r1", H1, "needs_approval"), released("r1", H1)],
        "followed no open needs_approval decision",
    ),
    (
        [
            decided("r1", H1, "allow"),
            approval("r1", H1, "approved"),
            released("r1", H1),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
        ],
        "followed no open needs_approval decision",
    ),
    # A rejected query approved later has no needs_approval decision left for the approval to follow.
    (
        [
            decided("r1", H1, "needs_approval"),
            approval("r1", H1, "rejected"),
            refused("r1"),
            approval("r1", H1, "approved"),
            decided("r1", H1, "needs_approval"),
            released("r1", H1),
        ],
        "followed no open needs_approval decision",
    ),
    # Nobody approves their own query, whatever organisation their token names.
    (
        [decided("r1", H1, "needs_approval"), approval("r1", H1, "approved", ACTOR), released("r1", H1)],
        "approved by the subject who asked",
    ),
    (
        [decided("r1", H1, "needs_approval"), approval("r1", H1, "approved", ELSEWHERE), released("r1", H1)],
        "approved by the subject who asked",
    ),
    (
        [decided("r1", H1, "needs_approval"), approval("r1", H1, "approved", None), released("r1", H1)],
        "names no steward",
    ),
    # A release is the decided request's: by the actor it was decided for.
    ([decided("r1", H1, "allow"), released("r1", H1, Actor("mallory", "evil"))], "another actor"),
    ([decided("r1", H1, "allow"), released("r1", H1, ELSEWHERE)], "another actor"),
    ([decided("r1", H1, "allow"), released("r1", H1, None)], "another actor"),
    ([decided("r1", H1, "allow"), opened("r1", H1, STEWARD)], "another actor"),
    (
        [decided("r1", H1, "needs_approval"), approval("r1", H1, "approved"), released("r1", H1, STEWARD)],
        "another actor",
    ),
]


@pytest.mark.parametrize("events", ALLOWED)
def test_releases_a_gateway_could_write_pass(tmp_path: Path, events: list[Any]) -> None:
    path, key = exported(tmp_path, events)
    summary = check_releases(path)
    assert summary.entries == len(events)
    assert summary.releases == sum(event[0] == "query.released" for event in events)
    result = CliRunner().invoke(app, ["audit", "verify", str(path), "--key", key])
    assert result.exit_code == 0, result.output
    assert "each allowed by its decision" in result.stdout


@pytest.mark.parametrize(("events", "why"), NOT_ALLOWED)
def test_a_release_no_decision_allowed_fails_verification(
    tmp_path: Path, events: list[Any], why: str
) -> None:
    path, key = exported(tmp_path, events)
    with pytest.raises(AuditIntegrityError) as caught:
        check_releases(path)
    assert caught.value.reason == "release_not_allowed" and why in caught.value.message
    assert caught.value.index == len(events) - 1
    # The chain itself is intact: the CLI says so by its exit code (5, not 1).
    result = CliRunner().invoke(app, ["audit", "verify", str(path), "--key", key])
    assert result.exit_code == 5, result.output
    assert "FAILED (release_not_allowed)" in result.output
    skipped = CliRunner().invoke(app, ["audit", "verify", str(path), "--key", key, "--no-releases"])
    assert skipped.exit_code == 0, skipped.output


def _python(entry: dict[str, Any]) -> bytes:
    """Python's compact spelling with sorted keys, which RFC 8785 shares only for plain values."""
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _export_of(lines: list[bytes]) -> io.BytesIO:
    """An export's header and entry lines (no checkpoint: `check_releases` reads the entries only)."""
    return io.BytesIO(export_format.header(ORIGIN, len(lines)) + b"".join(line + b"\n" for line in lines))


def _entry(index: int, kind: str, request: str, payload: dict[str, Any]) -> dict[str, Any]:
    entry = {"actor": ACTOR.as_json(), "index": index, "origin": ORIGIN, "payload": payload}
    return {
        **entry,
        "prev": "A" * 43 + "=",
        "request_id": request,
        "time": "2026-12-07T09:00:00Z",
        "type": kind,
    }


@pytest.mark.parametrize(
    "spell",
    [
        # Two "type" members: Python's reader keeps the last (a release), others the first (a refusal).
        lambda e: rfc8785.dumps(e).replace(b'"type":', b'"type":"query.refused","type":', 1),
        lambda e: json.dumps(e, separators=(", ", ": "), sort_keys=True).encode(),
        lambda e: rfc8785.dumps(e).replace(b'"index"', b'"\\u0069ndex"'),
        lambda e: _python({**e, "payload": {**e["payload"], "cells": 2**53 + 1}}),  # no double holds it
        lambda e: rfc8785.dumps(e).replace(b'"cells":4', b'"cells":4.0'),
        lambda e: json.dumps(e, sort_keys=True, separators=(",", ":")).encode(),  # non-ASCII escaped
    ],
)
def test_an_entry_that_is_not_canonical_json_fails(spell: Any) -> None:
    first = _entry(0, "query.decided", "r1", decided("r1", H1, "allow")[2])
    second = _entry(1, "query.released", "r1", {**released("r1", H1)[2], "cells": 4})
    first["actor"] = second["actor"] = {"org": "Universität", "sub": "r"}
    lines = [rfc8785.dumps(first), rfc8785.dumps(second)]
    assert check_releases(_export_of(lines)).releases == 1
    with pytest.raises(AuditIntegrityError) as caught:
        check_releases(_export_of([lines[0], spell(second)]))
    assert caught.value.reason == "non_canonical" and caught.value.index == 1


def test_floats_and_keys_beyond_ascii_are_compared_with_rfc_8785_itself() -> None:
    entry = _entry(0, "query.executed", "r1", {"query_hash": H1, "dataset_digest": H2, "duration_ms": 1e16})
    entry["actor"] = {"org": "\U0001f600", "sub": "é"}
    assert check_releases(_export_of([rfc8785.dumps(entry)])).entries == 1
    python_spelling = _python(entry)
    assert python_spelling != rfc8785.dumps(entry)  # 1e+16 against 10000000000000000
    with pytest.raises(AuditIntegrityError):
        check_releases(_export_of([python_spelling]))
