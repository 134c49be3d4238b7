"""A public transparency report from a verified export: how many requests of each kind a site answered or
refused, per month, quarter or year, without naming anyone, and without a count small enough to single
anyone out.

`transparency_report` first verifies the export exactly as `fedgate audit verify` does (`verify_export`
with the log's key and the witnesses' keys, then `check_releases`), raising the same AuditIntegrityError;
an export that does not verify yields no report. All three passes read one open file, and the pass that
counts re-hashes every entry it counts into the Merkle tree and compares the root with the checkpoint
just verified: the counts are those of the signed entries, never of a file changed meanwhile (reason
`changed_while_read`). Like the verifier, it imports nothing from the log writer.

Rules (they count requests and events, never patients, except the consent line):

- **Periods.** Every count belongs to the UTC calendar month (`2026-07`), quarter (`2026-Q3`) or year
  (`2026`) of one entry's `time`: for a query, its `query.received` entry (its decision, approval,
  release or refusal may come later, even in a later period, and still counts there); for a federated
  query, its `federation.received` entry; for anything else, the entry itself. `since` and `until` (UTC
  dates, both inclusive) keep only what belongs to those days. The periods listed run from the first to
  the last day the export's entries cover (narrowed by `since` and `until`), every period between them
  included, with zeros when nothing happened; each period's `from` and `to` are the days it covers, so a
  period cut by the export's first or last entry, or by `since` or `until`, says so.
- **Queries** (`queries`, by the `dsa` and then the `kind` of `query.received`). A request is one request
  id with a `query.received` entry; every later entry under that id belongs to it. Each request counts in
  exactly one outcome:
  - `released`: an answer left the site at least once. A release answers the researcher, except the
    first `query.released` after a steward's approval, which stores the approved answer at the site
    until the researcher collects it (a collect is released, or refused, again);
  - `rejected`: the latest `approval.decided` of the request rejected it;
  - otherwise the request's latest end: `cancelled` for a refusal at stage `decide` whose reasons are
    only the one the gateway records for a request whose caller stopped waiting before it was decided;
    `denied_by_policy` for a `query.decided` of decision `deny` or another refusal at stage `decide`
    (also the agreement's terms the gateway cannot meet, such as differential privacy, or an approved
    answer out of date when collected); `refused_by_disclosure_control` for a refusal at stage
    `disclosure`; `refused_at_<stage>` for a refusal at stage validate, authorize, plan, execute, budget
    or limit, `refused_at_other` for any other stage; `pending` for a request with no end yet: waiting
    for a steward, approved but not yet collected, or sent back to the stewards because its approved
    answer could not be stored (a refusal at stage `approval` that no rejection preceded).
- **Peer queries** (`peer_queries`): the same, for the requests whose `query.received` says `federated`
  (this site's part of a federated query coordinated by a verified peer). `queries` holds the others.
- **Invalid queries** (`invalid_queries`), each entry 1 plus its `suppressed`: `query.refused` entries of
  no request (refused before a query was read: stage `validate`), and `request.refused` entries of no
  request whose `route` is a query endpoint's (`QUERY_ROUTES`: `POST:submit`, `GET:poll`,
  `POST:open_session`, `POST:iterate`, `DELETE:close_session`; the log names a route by method and name,
  never by path). Those the federated coordinator wrote count in `invalid_federated_queries` instead:
  route `POST:federated_glm`, or `POST:submit` with one of the coordinator's titles
  (`COORDINATOR_TITLES`: a bad `sites` or `timeout_s`, an unknown site, a kind the federation does not
  pool, no peer key). A body the framework's validation refused is a `query.refused`, which names no
  route: it counts in `invalid_queries` whichever endpoint it was sent to. The witness's
  `POST /v1/witness/submissions` shares the route name `submit`: its unforeseen failure (a steward's,
  title `Internal error`) counts as an invalid query too.
- **Federated queries** (`federated_queries`, by `kind`, as a coordinator): per `federation.received`,
  `released` or `refused` by the request's latest `federation.released` or `federation.refused`, else
  `pending`.
- **GLM** (`glm`): `sessions_opened` (`glm.session_opened`), `sessions_refused` (`glm.refused` of an
  opening: no session or iteration named, stage not `session`; also one that needs a steward's
  approval), `iterations` (`glm.iteration`) and `iterations_refused` (the other `glm.refused`).
- **Authentication failures** (`auth_failures`): `auth.failed` entries, each 1 plus its `suppressed`.
- **Consent withdrawals** (`consent_withdrawals`): `events`, and the totals of their `patients` (named
  in the withdrawals) and `new` (not withdrawn before).
- **Policy changes** (`policy_changes`): `policy.changed` entries by `change` (`policy`, `dsa`, `data`,
  `found_at_startup`, `cli_reload`; `other` for anything else).
- **Datasets published** (`datasets_published`): `ingest.published` entries.
- **Who asked** (`organisations`, `researchers`): how many distinct `actor.org` and `actor.sub` values the
  period's requests name (`query.received`, `federation.received`, `glm.session_opened`, `glm.refused`
  and the invalid queries' refusals). Only the counts leave this module: no name, no digest of a name,
  and nothing from which one could be recovered.
- **Labels** shown are the site's own: query kinds and agreement (`dsa`) names, which the log takes
  only as labels that look like no identifier (`audit.events.Label`). An agreement is named only if a
  decision in the export allowed a query under it or sent one to a steward: a name a researcher typed
  that no agreement of the site bears is no label of the site's, and the queries under such names are
  counted together under `UNKNOWN_AGREEMENTS`.

Small counts are hidden (`min_count`, k: 5 unless chosen, never below 2, since the report is public; the
exact counts are the export's, for whoever holds it and `fedgate audit verify`):

- every count from 1 to k-1 is hidden: `None` in the report (JSON `null`, with `hidden_below` saying k);
  0 and counts of k or more are shown as they are;
- the agreements fewer than k distinct researchers (`actor.sub`) asked under in the period, in queries
  and peer queries together, are counted together under `MERGED_AGREEMENTS`, so that an agreement one
  researcher uses is not named beside their requests; its counts are hidden by the same rule.

A hidden count must not follow from the counts shown. Rather than print totals and hide more counts to
cover them, the report prints none: every query counts in exactly one cell (its agreement, its kind,
whether a peer's, its outcome) and in no other number, so no shown count is the sum of others (there is
no `received`, no count by kind over the agreements nor by agreement over the kinds, no count of the
requests sent to a steward or approved beside their outcomes, and no federated `received`: each of these
is a sum of cells, or bounds some, and would give a hidden one back by subtraction). A reader adds up the
cells shown, and knows the total is larger by as many hidden cells as there are, each 1 to k-1. Counts
of different things still bound one another (a period's researchers asked at least one request each),
which narrows a hidden count and, in a period where nearly everything is hidden, can pin one: the
threshold stops subtraction, not every inference. Reports of overlapping times (a quarter and its months,
or `since`/`until` shifted by a day) can be subtracted from each other: a site publishes one series.

An entry that is not an object with a `type`, a `payload` and a UTC `time` (`YYYY-MM-DDTHH:MM:SS…Z`)
raises AuditIntegrityError (`malformed_entry`): a verified export holds none, as the log writes none.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from audit.errors import AuditIntegrityError
from audit.merkle import CompactRange, leaf_hash
from audit.notes import VerifierKey
from audit.verify.reader import ExportReader
from audit.verify.releases import check_releases
from audit.verify.verifier import verify_export

Period = Literal["month", "quarter", "year"]
PERIODS: tuple[Period, ...] = ("month", "quarter", "year")

OTHER_STAGES = ("validate", "authorize", "plan", "execute", "budget", "limit", "other")
"""The stages a refusal is counted under by name (`refused_at_<stage>`), beyond decide and disclosure."""
OUTCOMES = (
    "released", "denied_by_policy", "refused_by_disclosure_control", "rejected",
    *(f"refused_at_{stage}" for stage in OTHER_STAGES), "cancelled", "pending",
)  # fmt: skip
"""Each request's one outcome: the counts of one kind of query under one agreement."""
FEDERATED_COUNTS = ("released", "refused", "pending")
GLM_COUNTS = ("sessions_opened", "sessions_refused", "iterations", "iterations_refused")
POLICY_CHANGES = ("policy", "dsa", "data", "found_at_startup", "cli_reload", "other")
DEFAULT_MIN_COUNT = 5
"""The smallest count shown as it is, unless another is chosen; counts from 1 up to it are hidden."""
QUERY_ROUTE_LABELS = frozenset(
    {"POST:submit", "GET:poll", "POST:open_session", "POST:iterate", "DELETE:close_session",
     "POST:federated_glm"}
)  # fmt: skip
"""The `route` of a `request.refused` on a query endpoint (gateway.deps.route_label: method and route name)
of /v1/queries, /v1/federated-queries, /v1/glm/ and /v1/federated-glm (gateway.app.QUERY_ROUTES)."""
COORDINATOR_TITLES = frozenset(
    {"Invalid federated query", "Not a federated kind", "Unknown site", "No peer signing key"}
)
"""The titles of the refusals the federated coordinator writes on `POST:submit` before it asks any site
(gateway.federation.coordinator): /v1/queries shares the route name."""
CANCELLED_REASON = "the request was cancelled before it ended"
"""The reason a gateway records, at stage decide, for a request whose caller stopped waiting before it was
decided (gateway.pipeline.CANCELLED)."""


UNKNOWN_AGREEMENTS = "(agreements no decision allowed)"
"""The label of the names no decision in the export allowed a query under (typed wrong, or no agreement of
the site): never printed as they were written."""


def merged_agreements(min_count: int) -> str:
    """The label of the agreements fewer than `min_count` researchers asked under, counted together (no
    agreement label can be it: labels start with a letter, a digit or a slash)."""
    return f"(agreements with fewer than {min_count} researchers)"


_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z")
_STAGE_OUTCOME = {"decide": "denied_by_policy", "disclosure": "refused_by_disclosure_control"}
_STAGE_OUTCOME.update({s: f"refused_at_{s}" for s in OTHER_STAGES if s != "other"})


@dataclass(frozen=True)
class TransparencyReport:
    """The report of one verified export: its log, checkpoint, the witnesses counted, and the periods."""

    origin: str
    checkpoint_size: int
    root: bytes
    witnesses: tuple[str, ...]
    period: Period
    since: date | None
    until: date | None
    min_count: int
    """Counts from 1 to `min_count` - 1 are hidden: None in `periods`."""
    periods: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, Any]:
        """The stable JSON document (`--json`; its shape is in docs/audit.md); a hidden count is null."""
        return {
            "origin": self.origin,
            "checkpoint_size": self.checkpoint_size,
            "root": self.root.hex(),
            "witnesses": list(self.witnesses),
            "period": self.period,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "hidden_below": self.min_count,
            "periods": list(self.periods),
        }


def transparency_report(
    source: Path | str,
    log_key: str | VerifierKey,
    witness_keys: Sequence[str | VerifierKey] = (),
    min_witnesses: int = 0,
    *,
    period: Period = "quarter",
    since: date | None = None,
    until: date | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
    progress: Callable[[int, int], None] | None = None,
) -> TransparencyReport:
    """Verify the export at `source` as `fedgate audit verify` does, then count it by the rules above,
    hiding the counts from 1 to `min_count` - 1.

    Raises AuditIntegrityError when it does not verify (or changed while it was read), OSError when it
    cannot be read, ValueError for an unknown period, `since` after `until` or a `min_count` below 2."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 2:
        raise ValueError("min_count must be an integer of at least 2: the report is public")
    if since is not None and until is not None and since > until:
        raise ValueError("since is after until")
    with Path(source).open("rb") as stream:
        summary = verify_export(stream, log_key, witness_keys, min_witnesses, progress=progress)
        stream.seek(0)
        check_releases(stream)
        stream.seek(0)
        tally = _Tally()
        _count(ExportReader(stream), tally, summary.size, summary.root)
    return TransparencyReport(
        origin=summary.origin,
        checkpoint_size=summary.size,
        root=summary.root,
        witnesses=summary.witnesses,
        period=period,
        since=since,
        until=until,
        min_count=min_count,
        periods=tuple(tally.periods(period, since, until, min_count)),
    )


def _count(reader: ExportReader, tally: _Tally, size: int, root: bytes) -> None:
    """Count every entry, and check that the entries counted are those the checkpoint signed."""
    tree = CompactRange()
    index = 0
    for chunk in reader.entry_chunks():
        tree.extend([leaf_hash(line) for line in chunk])
        for line in chunk:
            tally.add(_entry(line, index), index)
            index += 1
    if index != size or tree.root() != root:
        raise AuditIntegrityError(
            "changed_while_read",
            "the export changed while it was read: the entries counted are not the ones just verified",
        )


def _entry(line: bytes, index: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        entry = None
    if not isinstance(entry, dict):
        raise AuditIntegrityError("malformed_entry", f"entry {index} is not a JSON object", index=index)
    return entry


@dataclass(slots=True)
class _Request:
    """One query (a request id with a `query.received` entry) and what became of it so far."""

    day: date
    kind: str
    dsa: str
    peer: bool
    sub: str | None  # who asked: only to count the researchers of each agreement
    end: str = "pending"
    left: bool = False  # an answer left the site
    verdict: str | None = None  # the latest approval.decided
    storing: bool = False  # approved: the next release stores the answer for a collect

    def outcome(self) -> str:
        if self.left:
            return "released"
        if self.verdict == "rejected":
            return "rejected"
        return self.end


@dataclass(slots=True)
class _Federated:
    day: date
    kind: str
    end: str = "pending"


Row = dict[str, int]
Rows = dict[str, dict[str, Row]]
"""Queries counted by agreement, then kind: each request in one row, in one outcome."""


@dataclass
class _Bucket:
    """What one day holds, before days are summed into periods."""

    events: Counter[str] = field(default_factory=Counter)
    orgs: set[str] = field(default_factory=set)
    subs: set[str] = field(default_factory=set)


class _Tally:
    """Reads the entries in order; `periods` sums them up by period at the end."""

    def __init__(self) -> None:
        self.requests: dict[str, _Request] = {}
        self.known_agreements: set[str] = (
            set()
        )  # those a decision allowed a query under, or sent to a steward
        self.ended: list[_Request] = []  # requests whose id a later query.received took again
        self.federated: dict[str, _Federated] = {}
        self.federated_ended: list[_Federated] = []
        self.days: dict[date, _Bucket] = {}
        self.first: date | None = None
        self.last: date | None = None

    def add(self, entry: dict[str, Any], index: int) -> None:
        kind, payload, day = entry.get("type"), entry.get("payload"), _day(entry.get("time"))
        if not isinstance(kind, str) or not isinstance(payload, dict) or day is None:
            raise AuditIntegrityError(
                "malformed_entry", f"entry {index} has no type, payload or UTC time", index=index
            )
        self.first = day if self.first is None else min(self.first, day)
        self.last = day if self.last is None else max(self.last, day)
        rid = entry.get("request_id")
        request = self.requests.get(rid) if isinstance(rid, str) else None
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, entry, payload, day, rid if isinstance(rid, str) else None, request)

    def bucket(self, day: date) -> _Bucket:
        found = self.days.get(day)
        if found is None:
            found = self.days[day] = _Bucket()
        return found

    def asked(self, entry: dict[str, Any], day: date) -> None:
        """Note who asked (only to count them)."""
        actor = entry.get("actor")
        if not isinstance(actor, dict):
            return
        bucket = self.bucket(day)
        if isinstance(org := actor.get("org"), str):
            bucket.orgs.add(org)
        if isinstance(sub := actor.get("sub"), str):
            bucket.subs.add(sub)

    # -- summing up ----------------------------------------------------------------------------------------

    def periods(
        self, period: Period, since: date | None, until: date | None, min_count: int
    ) -> list[dict[str, Any]]:
        """The periods' counts, agreements with fewer researchers than `min_count` merged and counts below
        it hidden (1 shows them all exactly: for tests, never for a report)."""
        if self.first is None or self.last is None:
            return []
        start = max(self.first, since) if since else self.first
        end = min(self.last, until) if until else self.last
        out: list[dict[str, Any]] = []
        by_label: dict[str, dict[str, Any]] = {}
        opened = _period_start(start, period)
        while opened <= end:
            closed = _period_end(opened, period)
            label = _label(opened, period)
            shown = _empty_period(label, max(opened, start), min(closed, end))
            out.append(shown)
            by_label[label] = shown
            if closed == date.max:
                break
            opened = closed + timedelta(days=1)

        def target(day: date) -> dict[str, Any] | None:
            return by_label.get(_label(day, period)) if start <= day <= end else None

        asking: dict[str, dict[str, set[str]]] = {label: {} for label in by_label}  # researchers by dsa
        for request in [*self.ended, *self.requests.values()]:
            if (into := target(request.day)) is None:
                continue
            rows: Rows = into["peer_queries" if request.peer else "queries"]
            row = rows.setdefault(request.dsa, {}).setdefault(request.kind, dict.fromkeys(OUTCOMES, 0))
            row[request.outcome()] += 1
            subs = asking[into["period"]].setdefault(request.dsa, set())
            if request.sub is not None:
                subs.add(request.sub)
        for fed in [*self.federated_ended, *self.federated.values()]:
            if (into := target(fed.day)) is not None:
                counts = into["federated_queries"].setdefault(fed.kind, dict.fromkeys(FEDERATED_COUNTS, 0))
                counts[fed.end] += 1
        seen: dict[str, tuple[set[str], set[str]]] = {}
        for day, bucket in self.days.items():
            if (into := target(day)) is None:
                continue
            orgs, subs = seen.setdefault(into["period"], (set(), set()))
            orgs |= bucket.orgs
            subs |= bucket.subs
            for name, n in bucket.events.items():
                group, _, key = name.partition(".")
                if key:
                    into[group][key] += n
                else:
                    into[group] += n
        for shown in out:
            orgs, subs = seen.get(shown["period"], (set(), set()))
            shown["organisations"], shown["researchers"] = len(orgs), len(subs)
            merged = {
                dsa: UNKNOWN_AGREEMENTS for dsa in asking[shown["period"]] if dsa not in self.known_agreements
            }
            few = merged_agreements(min_count)
            merged |= {
                dsa: few
                for dsa, who in asking[shown["period"]].items()
                if dsa not in merged and len(who) < min_count
            }
            for group in ("queries", "peer_queries"):
                shown[group] = _merged(shown[group], merged)
            shown["federated_queries"] = dict(sorted(shown["federated_queries"].items()))
        return [_hidden(shown, min_count) for shown in out]


def _merged(rows: Rows, merged: dict[str, str]) -> Rows:
    """The rows sorted by agreement and kind; those of the agreements `merged` maps to a label summed into
    one row per label, after the named ones (labels in sorted order)."""
    named: Rows = {
        dsa: dict(sorted(kinds.items())) for dsa, kinds in sorted(rows.items()) if dsa not in merged
    }
    together: dict[str, dict[str, Row]] = {}
    for dsa in merged.keys() & rows.keys():
        for kind, row in rows[dsa].items():
            into = together.setdefault(merged[dsa], {}).setdefault(kind, dict.fromkeys(OUTCOMES, 0))
            for outcome, n in row.items():
                into[outcome] += n
    for label in sorted(together):
        named[label] = dict(sorted(together[label].items()))
    return named


def _hidden(value: Any, min_count: int) -> Any:
    """`value` with every count from 1 to `min_count` - 1 in it replaced by None."""
    if isinstance(value, dict):
        return {key: _hidden(item, min_count) for key, item in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < min_count:
        return None
    return value


def _empty_period(label: str, start: date, end: date) -> dict[str, Any]:
    return {
        "period": label,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "queries": {},
        "peer_queries": {},
        "invalid_queries": 0,
        "federated_queries": {},
        "invalid_federated_queries": 0,
        "glm": dict.fromkeys(GLM_COUNTS, 0),
        "auth_failures": 0,
        "consent_withdrawals": {"events": 0, "patients": 0, "new": 0},
        "policy_changes": dict.fromkeys(POLICY_CHANGES, 0),
        "datasets_published": 0,
        "organisations": 0,
        "researchers": 0,
    }


# -- entries -------------------------------------------------------------------------------------------------

Handler = Callable[[_Tally, dict[str, Any], dict[str, Any], date, str | None, _Request | None], None]


def _received(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
              old: _Request | None) -> None:  # fmt: skip
    t.asked(entry, day)
    if rid is None:
        return
    if old is not None:
        t.ended.append(old)
    actor = entry.get("actor")
    sub = actor.get("sub") if isinstance(actor, dict) else None
    t.requests[rid] = _Request(
        day, _text(p.get("kind")), _text(p.get("dsa")), p.get("federated") is True,
        sub if isinstance(sub, str) else None,
    )  # fmt: skip


def _decided(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
             r: _Request | None) -> None:  # fmt: skip
    if r is None:  # a GLM session's decision: its glm.* entries count it
        return
    if p.get("decision") == "deny":
        r.end = "denied_by_policy"
    elif p.get("decision") in ("allow", "needs_approval"):
        t.known_agreements.add(r.dsa)


def _approval(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
              r: _Request | None) -> None:  # fmt: skip
    if r is None:
        return
    r.verdict = _text(p.get("decision"))
    r.storing = r.verdict == "approved"
    if r.storing:
        r.end = "pending"


def _released(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
              r: _Request | None) -> None:  # fmt: skip
    if r is None:
        return
    if r.storing:  # the approved run: the answer stays at the site until it is collected
        r.storing = False
        r.end = "pending"
    else:
        r.left = True


def _refused(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
             r: _Request | None) -> None:  # fmt: skip
    if r is None:  # refused before any query was read
        t.bucket(day).events["invalid_queries"] += 1 + _count_of(p.get("suppressed"))
        t.asked(entry, day)
        return
    r.storing = False
    stage = p.get("stage")
    if stage == "approval":
        # After a rejection, the refusal that ends the request (`rejected` wins); otherwise the approved
        # answer was not stored and the request went back to the stewards.
        r.end = "pending"
    elif stage == "decide" and p.get("reasons") == [CANCELLED_REASON]:
        r.end = "cancelled"
    else:
        r.end = _STAGE_OUTCOME.get(str(stage), "refused_at_other")


def _request_refused(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
                     r: _Request | None) -> None:  # fmt: skip
    route = p.get("route")
    if r is not None or route not in QUERY_ROUTE_LABELS:  # another endpoint's, or a counted request's
        return
    coordinator = route == "POST:federated_glm" or (
        route == "POST:submit" and p.get("title") in COORDINATOR_TITLES
    )
    name = "invalid_federated_queries" if coordinator else "invalid_queries"
    t.bucket(day).events[name] += 1 + _count_of(p.get("suppressed"))
    t.asked(entry, day)


def _federation_received(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
                         r: _Request | None) -> None:  # fmt: skip
    t.asked(entry, day)
    if rid is None:
        return
    if (old := t.federated.get(rid)) is not None:
        t.federated_ended.append(old)
    t.federated[rid] = _Federated(day, _text(p.get("kind")))


def _federation_end(end: str) -> Handler:
    def handle(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
               r: _Request | None) -> None:  # fmt: skip
        if rid is not None and (fed := t.federated.get(rid)) is not None:
            fed.end = end

    return handle


def _glm_refused(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
                 r: _Request | None) -> None:  # fmt: skip
    t.asked(entry, day)
    of_session = "session" in p or "iteration" in p or p.get("stage") == "session"
    t.bucket(day).events["glm.iterations_refused" if of_session else "glm.sessions_refused"] += 1


def _glm_opened(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
                r: _Request | None) -> None:  # fmt: skip
    t.asked(entry, day)
    t.bucket(day).events["glm.sessions_opened"] += 1


def _event(name: str, *, suppressed: bool = False) -> Handler:
    def handle(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
               r: _Request | None) -> None:  # fmt: skip
        t.bucket(day).events[name] += 1 + (_count_of(p.get("suppressed")) if suppressed else 0)

    return handle


def _consent(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
             r: _Request | None) -> None:  # fmt: skip
    events = t.bucket(day).events
    events["consent_withdrawals.events"] += 1
    events["consent_withdrawals.patients"] += _count_of(p.get("patients"))
    events["consent_withdrawals.new"] += _count_of(p.get("new"))


def _policy(t: _Tally, entry: dict[str, Any], p: dict[str, Any], day: date, rid: str | None,
            r: _Request | None) -> None:  # fmt: skip
    change = p.get("change")
    key = change if isinstance(change, str) and change in POLICY_CHANGES else "other"
    t.bucket(day).events[f"policy_changes.{key}"] += 1


_HANDLERS: dict[str, Handler] = {
    "query.received": _received,
    "query.decided": _decided,
    "approval.decided": _approval,
    "query.released": _released,
    "query.refused": _refused,
    "request.refused": _request_refused,
    "federation.received": _federation_received,
    "federation.released": _federation_end("released"),
    "federation.refused": _federation_end("refused"),
    "glm.session_opened": _glm_opened,
    "glm.refused": _glm_refused,
    "glm.iteration": _event("glm.iterations"),
    "auth.failed": _event("auth_failures", suppressed=True),
    "consent.withdrawn": _consent,
    "policy.changed": _policy,
    "ingest.published": _event("datasets_published"),
}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "?"


def _count_of(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _day(value: Any) -> date | None:
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


# -- periods -------------------------------------------------------------------------------------------------


def _period_start(day: date, period: Period) -> date:
    if period == "year":
        return date(day.year, 1, 1)
    if period == "quarter":
        return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return date(day.year, day.month, 1)


def _period_end(opened: date, period: Period) -> date:
    """The last day of the period that starts on `opened`."""
    months = opened.month - 1 + {"month": 1, "quarter": 3, "year": 12}[period]
    if months >= 12 and opened.year == date.max.year:
        return date.max
    return date(opened.year + months // 12, months % 12 + 1, 1) - timedelta(days=1)


def _label(day: date, period: Period) -> str:
    if period == "year":
        return f"{day.year:04d}"
    if period == "quarter":
        return f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}"
    return f"{day.year:04d}-{day.month:02d}"
