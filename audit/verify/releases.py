"""`check_releases`: every release an export records was allowed, and every entry reads one way only.

Run on an export that `verify_export` found intact; it reads the entries' meaning, which the chain checks
do not:

- each entry is the canonical JSON (RFC 8785) the log writes: no duplicate member (which readers resolve
  differently, so one entry could read as a release to one tool and a refusal to another), no other
  spelling of a key or value, no whitespace;
- each `query.released` follows, under its request id, a `query.decided` of the same query hash that
  allowed it, or that sent it to a steward and an `approval.decided` that approved that query hash, with
  no release or refusal between: every release has a decision of its own (an approved answer collected
  again is decided again);
- an approval counts only if it follows, under its request id, a `needs_approval` decision of the same
  query hash that no release or refusal has ended yet, and names another subject than that decision's
  actor (a steward never approves their own query; the gateway tells callers apart by subject, whatever
  organisation their token names); a later `approval.decided` that does not approve (a rejection)
  cancels it, and so does a refusal of the request before anything was released after the approval (the
  approved run was refused, and only another approval may run it again) or a refusal at stage `approval`
  (the approved answer was not stored, and the request went back to the stewards); a refusal after the
  approval's first release leaves it counting, for the researcher's later collects of that answer;
- a release is written under the actor of the decision it follows: the gateway decides and releases
  under one principal (the researcher's own, also when a steward's approval runs the query), so a
  release by anyone else was not the decided request's;
- each `glm.session_opened` follows an allowing decision in the same way, and each `glm.iteration` (the
  sums a GLM site releases) belongs to a query hash whose session was opened.

The first entry that breaks a rule raises AuditIntegrityError, naming the entry and the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import rfc8785

from audit.errors import AuditIntegrityError
from audit.verify.reader import ExportReader

_SAFE_INT = 2**53 - 1


@dataclass(frozen=True)
class ReleaseSummary:
    """What was checked: entries read, query answers released, GLM sessions and iterations."""

    entries: int
    releases: int
    glm_sessions: int
    glm_iterations: int


@dataclass(frozen=True)
class _Decided:
    """A request's latest decision that no release or refusal has followed yet."""

    query_hash: str
    decision: str
    actor: Any  # the entry's actor object (or None), compared as the JSON it was


@dataclass
class _Requests:
    open: dict[str, _Decided] = field(default_factory=dict)  # request id -> its open decision
    # request id -> its latest needs_approval decision, until a steward rejects it: a query whose approved
    # answer the site could not store goes back to the stewards after its release and refusal
    # (gateway.pipeline.QueryPipeline._not_stored), and its next approval follows that decision
    queued: dict[str, _Decided] = field(default_factory=dict)
    approved: dict[str, str] = field(default_factory=dict)  # request id -> the query hash a steward approved
    # request ids released since their latest approval: a refusal after that ends a collect, not the approval
    released_since_approval: set[str] = field(default_factory=set)
    # request id -> why its latest approval did not count, for the message of the release it did not allow
    unapproved: dict[str, str] = field(default_factory=dict)
    glm_opened: set[str] = field(default_factory=set)  # query hashes of opened sessions


def check_releases(source: Path | str | IO[bytes]) -> ReleaseSummary:
    """Check every entry of an export (a path or a binary stream) against the rules above."""
    if isinstance(source, str | Path):
        with Path(source).open("rb") as stream:
            return _check(ExportReader(stream))
    return _check(ExportReader(source))


def _check(reader: ExportReader) -> ReleaseSummary:
    state = _Requests()
    index = releases = iterations = 0
    for chunk in reader.entry_chunks():
        for line in chunk:
            entry = _entry(line, index)
            kind = _release_rule(entry, index, state)
            releases += kind == "query.released"
            iterations += kind == "glm.iteration"
            index += 1
    if index != reader.size:
        raise AuditIntegrityError("truncated", f"the export holds {index} of its {reader.size} entries")
    return ReleaseSummary(index, releases, len(state.glm_opened), iterations)


def _entry(line: bytes, index: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        raise AuditIntegrityError("malformed_entry", f"entry {index} is not JSON", index=index) from None
    if type(entry) is not dict or not _canonical(entry, line):
        raise AuditIntegrityError(
            "non_canonical",
            f"entry {index} is not the canonical JSON (RFC 8785) the log writes: a member twice, another "
            f"spelling or whitespace, which another reader could read otherwise",
            index=index,
        )
    return entry


def _canonical(entry: dict[str, Any], line: bytes) -> bool:
    """Whether `line` is `entry`'s RFC 8785 form. Without floats, integers past 2**53 - 1 or keys beyond
    ASCII, Python's own serializer (sorted keys, no spaces, raw UTF-8) writes the same bytes, at a fraction
    of the cost; anything else is compared with RFC 8785 itself."""
    if _plain(entry):
        try:
            plain = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            return plain.encode() == line
        except UnicodeEncodeError:  # a lone surrogate, which canonical JSON escapes and UTF-8 cannot hold
            return False
    try:
        return bytes(rfc8785.dumps(_wide_as_floats(entry))) == line
    except (rfc8785.CanonicalizationError, OverflowError):
        return False


def _wide_as_floats(value: Any) -> Any:
    """`value` with integers past 2**53 - 1 read back as the floats they were: canonical JSON spells an
    integral float without a fraction (1e16 as 10000000000000000), which JSON readers return as an int."""
    if isinstance(value, dict):
        return {k: _wide_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wide_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -_SAFE_INT <= value <= _SAFE_INT:
        return float(value)
    return value


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(k.isascii() and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, float):
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return -_SAFE_INT <= value <= _SAFE_INT
    return True


def _release_rule(entry: dict[str, Any], index: int, state: _Requests) -> str:
    """Apply the rules to one entry; its type."""
    kind = entry.get("type")
    payload = entry.get("payload")
    if not isinstance(kind, str) or not isinstance(payload, dict):
        raise AuditIntegrityError("malformed_entry", f"entry {index} has no type or payload", index=index)
    request = entry.get("request_id")
    query_hash = payload.get("query_hash")
    actor = entry.get("actor")
    if kind == "query.decided" and isinstance(request, str):
        state.open[request] = _Decided(str(query_hash), str(payload.get("decision")), actor)
        if payload.get("decision") == "needs_approval":
            state.queued[request] = state.open[request]
    elif kind == "approval.decided" and isinstance(request, str):
        _approval(request, query_hash, payload.get("decision"), actor, state)
    elif kind == "query.refused" and isinstance(request, str):
        state.open.pop(request, None)  # a refusal ends the decision it followed
        _refusal(request, payload.get("stage"), state)
    elif kind in ("query.released", "glm.session_opened"):
        # Each release needs a decision of its own: an approved answer collected again is decided again
        # (gateway.pipeline.QueryPipeline.collect), so no earlier decision can cover a later release.
        _allowed(kind, request, query_hash, actor, index, state)
        if request in state.approved:  # only approved requests need it: the set stays as small as they are
            state.released_since_approval.add(str(request))
        if kind == "glm.session_opened":
            state.glm_opened.add(str(query_hash))
    elif kind == "glm.iteration" and query_hash not in state.glm_opened:
        raise _not_allowed(index, "a GLM iteration ran for a query hash no session was opened for")
    return kind


def _approval(request: str, query_hash: Any, verdict: Any, actor: Any, state: _Requests) -> None:
    """Note a steward's decision on `request`: an approval that counts, or why it does not.

    Whatever its verdict, a new decision replaces the one before: an approval rejected later no longer
    approves anything."""
    state.approved.pop(request, None)
    state.unapproved.pop(request, None)
    state.released_since_approval.discard(request)
    if verdict != "approved":
        state.queued.pop(request, None)  # rejected: nothing waits for a steward any more
        state.unapproved[request] = "a steward's later decision on it did not approve it"
        return
    pending = state.open.get(request)
    if pending is None or pending.decision != "needs_approval":
        pending = state.queued.get(request)
    if pending is None or pending.decision != "needs_approval" or pending.query_hash != query_hash:
        state.unapproved[request] = (
            "its approval followed no open needs_approval decision of the query hash it approved"
        )
        return
    if _subject(actor) is None:
        state.unapproved[request] = "its approval names no steward"
        return
    if _subject(actor) == _subject(pending.actor):
        state.unapproved[request] = "it was approved by the subject who asked for it"
        return
    state.approved[request] = str(query_hash)


def _refusal(request: str, stage: Any, state: _Requests) -> None:
    """End the approval of a refused request, unless the refusal only ended a collect of its answer.

    The approved run is the approval's first release: a refusal before it (a deny when the query was
    decided again, disclosure control) ends the request, and a refusal at stage `approval` sends it back to
    the stewards (gateway.pipeline.QueryPipeline._not_stored). After that first release the researcher
    collects the answer, each collect decided again and refused or released on its own."""
    if request not in state.approved:
        return
    if stage == "approval":
        why = "a refusal at stage approval ended its approval (the approved answer was not kept)"
    elif request not in state.released_since_approval:
        why = "a refusal ended its approval before anything it approved was released"
    else:
        return
    del state.approved[request]
    state.unapproved[request] = why


def _subject(actor: Any) -> str | None:
    """Whom an entry's actor names, as the gateway tells callers apart: by subject (their organisation
    may differ from one token to the next)."""
    sub = actor.get("sub") if isinstance(actor, dict) else None
    return sub if isinstance(sub, str) else None


def _allowed(kind: str, request: Any, query_hash: Any, actor: Any, index: int, state: _Requests) -> None:
    """Raise unless `request` was decided allow for `query_hash`, or sent to a steward who approved it,
    and `actor` is whom it was decided for."""
    if not isinstance(request, str) or not isinstance(query_hash, str):
        raise _not_allowed(index, f"a {kind} entry without its request id or query hash")
    decided = state.open.pop(request, None)
    if decided is None:
        raise _not_allowed(
            index,
            f"request {request} has a {kind} entry but no query.decided before it that no release or refusal "
            f"has followed",
        )
    if decided.query_hash != query_hash:
        raise _not_allowed(index, f"request {request} was decided for another query hash than it released")
    if actor != decided.actor:
        raise _not_allowed(
            index, f"request {request} has a {kind} entry by another actor than the one it was decided for"
        )
    if decided.decision == "allow":
        return
    if decided.decision == "needs_approval" and state.approved.get(request) == query_hash:
        return
    why = state.unapproved.get(request)
    raise _not_allowed(
        index,
        f"request {request} was decided {decided.decision!r}, and no steward approved it"
        + (f" ({why})" if why and decided.decision == "needs_approval" else ""),
    )


def _not_allowed(index: int, message: str) -> AuditIntegrityError:
    return AuditIntegrityError("release_not_allowed", f"entry {index}: {message}", index=index)
