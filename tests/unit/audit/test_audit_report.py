"""`fedgate audit report` and `audit.report.transparency_report`: public counts of what a site answered and
refused, per period, from an export that verifies, never a name, and no count small enough to single anyone
out."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import ORIGIN, digest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

import audit.log
import gateway.consent
import gateway.federation.coordinator
import gateway.federation.glm_site  # noqa: F401 - registers the consent, federation and GLM event types
from audit.entry import Actor
from audit.errors import AuditIntegrityError
from audit.log import AuditLog
from audit.merkle import CompactRange, leaf_hash
from audit.notes import verifier_key_text
from audit.report import (
    CANCELLED_REASON,
    OUTCOMES,
    UNKNOWN_AGREEMENTS,
    Period,
    _count,
    _Tally,
    merged_agreements,
    transparency_report,
)
from audit.verify.reader import ExportReader
from gateway.cli import app
from gateway.pipeline import CANCELLED

runner = CliRunner()

# Names that must never appear in a report: researchers, stewards, organisations, and a name the gateway
# records by its digest.
ALICE = Actor("alice-researcher-7q", "org-alice-university")
BOB = Actor("bob-researcher-3x", "org-bob-institute")
DIGESTED = Actor("sha256:" + hashlib.sha256(b"carol@example.org").hexdigest()[:32], "org-carol-clinic")
STEWARD = Actor("steward-dana-9k", "org-site-steward")
NAMES = [a.sub for a in (ALICE, BOB, DIGESTED, STEWARD)] + [a.org for a in (ALICE, BOB, DIGESTED, STEWARD)]

Event = tuple[str, str | None, dict[str, Any], Actor | None]


def received(rid: str, kind: str, dsa: str, actor: Actor = ALICE, **extra: Any) -> Event:
    payload = {"query_hash": digest(rid), "kind": kind, "dataset": "cohort", "dsa": dsa, **extra}
    return "query.received", rid, payload, actor


def decided(rid: str, decision: str, actor: Actor = ALICE) -> Event:
    payload = {"query_hash": digest(rid), "decision": decision, "reasons": ["clause 4"],
               "policy_bundle": digest("bundle")}  # fmt: skip
    return "query.decided", rid, payload, actor


def executed(rid: str, actor: Actor = ALICE) -> Event:
    return "query.executed", rid, {"query_hash": digest(rid), "dataset_digest": digest("cohort")}, actor


def released(rid: str, actor: Actor = ALICE) -> Event:
    return "query.released", rid, {"query_hash": digest(rid), "result_hash": digest("r" + rid)}, actor


def refused(
    rid: str | None, stage: str, actor: Actor | None = ALICE, reasons: tuple[str, ...] = ("refused",)
) -> Event:
    payload = {"stage": stage, "reasons": list(reasons)}
    return "query.refused", rid, {**payload, "query_hash": digest(rid)} if rid else payload, actor


def request_refused(route: str, title: str, actor: Actor | None = ALICE, **extra: Any) -> Event:
    """A refusal the gateway's problem handler audited: its route (method and name) and title only."""
    return "request.refused", None, {"route": route, "refusal": "bad_request", "title": title, **extra}, actor


def approval(rid: str, verdict: str) -> Event:
    return "approval.decided", rid, {"query_hash": digest(rid), "decision": verdict}, STEWARD


def other(kind: str, payload: dict[str, Any], rid: str | None = None, actor: Actor | None = None) -> Event:
    return kind, rid, payload, actor


def session() -> list[Event]:
    """A day at a site: every outcome a query can have, and the other events a report counts."""
    return [
        # count under DSA-A: released, denied by policy, refused at the limit
        received("r1", "count", "DSA-A"),
        decided("r1", "allow"),
        executed("r1"),
        released("r1"),
        received("r2", "count", "DSA-A", BOB),
        decided("r2", "deny", BOB),
        refused("r2", "decide", BOB),
        received("r3", "count", "DSA-A"),
        decided("r3", "allow"),
        refused("r3", "limit"),
        # count under DSA-B: refused by disclosure control
        received("r4", "count", "DSA-B", DIGESTED),
        decided("r4", "allow", DIGESTED),
        executed("r4", DIGESTED),
        refused("r4", "disclosure", DIGESTED),
        # summary under DSA-B: approved, run (stored at the site), then collected: released
        received("r5", "summary", "DSA-B"),
        decided("r5", "needs_approval"),
        approval("r5", "approved"),
        decided("r5", "needs_approval"),
        executed("r5"),
        released("r5"),
        decided("r5", "needs_approval"),
        released("r5"),
        # approved and run, never collected: pending
        received("r6", "summary", "DSA-B", BOB),
        decided("r6", "needs_approval", BOB),
        approval("r6", "approved"),
        decided("r6", "needs_approval", BOB),
        executed("r6", BOB),
        released("r6", BOB),
        # rejected by a steward
        received("r7", "summary", "DSA-B"),
        decided("r7", "needs_approval"),
        approval("r7", "rejected"),
        refused("r7", "approval"),
        # still waiting for a steward
        received("r8", "summary", "DSA-B"),
        decided("r8", "needs_approval"),
        # a peer's part of a federated query
        received("r9", "count", "DSA-A", BOB, federated=True, coordinator="site-fr"),
        decided("r9", "allow", BOB),
        executed("r9", BOB),
        released("r9", BOB),
        # cancelled while it was being decided
        received("r10", "summary", "DSA-B", BOB),
        refused("r10", "decide", BOB, reasons=(CANCELLED,)),
        # refused before it was read: by validation, or by the endpoint (a poll of no such request)
        refused(None, "validate", BOB),
        request_refused("POST:submit", "Invalid query", BOB, field="params"),
        request_refused("GET:poll", "No such request", ALICE, suppressed=2),
        # refused by the federated coordinator before any site was asked
        request_refused("POST:submit", "Invalid federated query", ALICE, field="timeout_s"),
        request_refused("POST:submit", "Unknown site", BOB, field="sites"),
        request_refused("POST:federated_glm", "Unknown site", ALICE, field="sites", suppressed=1),
        # refusals on other endpoints are not queries
        request_refused("GET:approvals", "Role required", STEWARD),
        request_refused("PUT:replace_policy_document", "Invalid request", STEWARD),
        # a GLM session opened, one iteration run and one refused; another session refused
        decided("g1", "allow"),
        other(
            "glm.session_opened",
            {"query_hash": digest("g1"), "session": digest("s1"), "parameters": 2},
            "g1",
            ALICE,
        ),
        other(
            "glm.iteration", {"query_hash": digest("g1"), "iteration": 1, "family": "gaussian"}, "g2", ALICE
        ),
        other(
            "glm.refused",
            {"stage": "disclosure", "reasons": ["few"], "session": digest("s1"), "iteration": 2},
            "g3",
            ALICE,
        ),
        other("glm.refused", {"stage": "decide", "reasons": ["no"]}, "g4", BOB),
        # federated queries coordinated here: one released, one refused, one with no end yet
        other(
            "federation.received",
            {"query_hash": digest("f1"), "kind": "crosstab", "dataset": "cohort", "dsa": "DSA-A", "sites": 2},
            "f1",
            ALICE,
        ),
        other(
            "federation.released",
            {"query_hash": digest("f1"), "result_hash": digest("x"), "covered": 2},
            "f1",
            ALICE,
        ),
        other(
            "federation.received",
            {"query_hash": digest("f2"), "kind": "crosstab", "dataset": "cohort", "dsa": "DSA-A", "sites": 2},
            "f2",
            ALICE,
        ),
        other("federation.refused", {"query_hash": digest("f2"), "reasons": ["none answered"]}, "f2", ALICE),
        other(
            "federation.received",
            {"query_hash": digest("f3"), "kind": "count", "dataset": "cohort", "dsa": "DSA-A", "sites": 3},
            "f3",
            BOB,
        ),
        # the site's own activity
        other("auth.failed", {"reason": "expired"}),
        other("auth.failed", {"reason": "bad_signature", "suppressed": 3}),
        other("consent.withdrawn", {"dataset": "cohort", "patients": 5, "new": 4}, actor=STEWARD),
        other("policy.changed", {"bundle_digest": digest("b2"), "change": "dsa"}, actor=STEWARD),
        other(
            "ingest.published", {"dataset": "cohort", "dataset_digest": digest("d"), "rows": 20, "columns": 4}
        ),
    ]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The time the log writes into its next entries (UTC), set by the test."""
    now = ["2026-07-15T09:00:00.000000Z"]
    monkeypatch.setattr(audit.log, "format_time", lambda _ts: now[0])
    return now


def write_log(tmp_path: Path, clock: list[str], timed: list[tuple[str, list[Event]]]) -> tuple[Path, str]:
    """A real log holding each group of events at its time, exported and signed."""
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(f"sqlite:///{tmp_path / 'log.db'}", ORIGIN, key, checkpoint_interval_s=None) as log:
        for when, events in timed:
            clock[0] = when
            for kind, rid, payload, actor in events:
                log.append(kind, actor=actor, request_id=rid, payload=payload)
        log.checkpoint()
        log.export(tmp_path / "log.export")
    return tmp_path / "log.export", verifier_key_text(ORIGIN, key.public_key())


@pytest.fixture
def day_export(tmp_path: Path, clock: list[str]) -> Iterator[tuple[Path, str]]:
    yield write_log(tmp_path, clock, [("2026-07-15T09:00:00.000000Z", session())])


def exact(
    export: Path, vkey: str, period: Period = "quarter", since: date | None = None, until: date | None = None
) -> list[dict[str, Any]]:
    """The periods of a verified export with every count exact (a `min_count` of 1: never a report's)."""
    made = transparency_report(export, vkey)
    tally = _Tally()
    with export.open("rb") as stream:
        _count(ExportReader(stream), tally, made.checkpoint_size, made.root)
    return tally.periods(period, since, until, 1)


def nonzero(rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    return {dsa: {kind: {k: n for k, n in c.items() if n != 0} for kind, c in kinds.items()}
            for dsa, kinds in rows.items()}  # fmt: skip


def test_every_outcome_is_counted_once_by_agreement_and_kind(day_export: tuple[Path, str]) -> None:
    [part] = exact(*day_export)
    assert (part["period"], part["from"], part["to"]) == ("2026-Q3", "2026-07-15", "2026-07-15")
    assert nonzero(part["queries"]) == {
        "DSA-A": {"count": {"released": 1, "denied_by_policy": 1, "refused_at_limit": 1}},
        "DSA-B": {
            "count": {"refused_by_disclosure_control": 1},
            "summary": {"released": 1, "rejected": 1, "pending": 2, "cancelled": 1},
        },
    }
    assert nonzero(part["peer_queries"]) == {"DSA-A": {"count": {"released": 1}}}
    for group in ("queries", "peer_queries"):
        for kinds in part[group].values():
            assert all(list(counts) == list(OUTCOMES) for counts in kinds.values())
    assert part["invalid_queries"] == 1 + 1 + 3  # validation; an invalid query; a poll, 1 + 2 suppressed
    assert part["invalid_federated_queries"] == 1 + 1 + 2  # timeout_s, an unknown site, a GLM fit's: 1 + 1
    assert part["federated_queries"] == {
        "count": {"released": 0, "refused": 0, "pending": 1},
        "crosstab": {"released": 1, "refused": 1, "pending": 0},
    }
    assert part["glm"] == {
        "sessions_opened": 1,
        "sessions_refused": 1,
        "iterations": 1,
        "iterations_refused": 1,
    }
    assert part["auth_failures"] == 5  # one entry, and one standing for itself and 3 more
    assert part["consent_withdrawals"] == {"events": 1, "patients": 5, "new": 4}
    assert part["policy_changes"]["dsa"] == 1 and sum(part["policy_changes"].values()) == 1
    assert part["datasets_published"] == 1
    assert (part["organisations"], part["researchers"]) == (3, 3)  # Alice, Bob and the digested name


def test_a_cancelled_request_is_told_from_a_policy_denial(tmp_path: Path, clock: list[str]) -> None:
    """The gateway records a request its caller stopped waiting for as a refusal at stage decide, with a
    reason of its own: the report counts it as cancelled, not as denied by policy."""
    assert CANCELLED_REASON == CANCELLED
    crowd = [Actor(f"researcher-{n}-c", f"org-{n}-lab") for n in range(5)]
    events: list[Event] = []
    for n, actor in enumerate(crowd):
        events += [
            received(f"c{n}", "summary", "DSA-C", actor),
            refused(f"c{n}", "decide", actor, (CANCELLED,)),
        ]
        events += [received(f"d{n}", "summary", "DSA-C", actor), decided(f"d{n}", "deny", actor),
                   refused(f"d{n}", "decide", actor)]  # fmt: skip
    # One query the policy allowed: DSA-C is an agreement of the site, named in the report.
    events += [received("a0", "summary", "DSA-C", crowd[0]), decided("a0", "allow", crowd[0])]
    export, vkey = write_log(tmp_path, clock, [("2026-07-15T09:00:00.000000Z", events)])
    [part] = transparency_report(export, vkey).as_json()["periods"]
    summary = part["queries"]["DSA-C"]["summary"]
    assert (summary["cancelled"], summary["denied_by_policy"]) == (5, 5)


def test_a_name_no_decision_allowed_is_never_printed(tmp_path: Path, clock: list[str]) -> None:
    """Researchers may type anything as an agreement; only names some decision allowed a query under are
    the site's labels. The others are counted together, however many researchers typed them."""
    crowd = [Actor(f"researcher-{n}-t", f"org-{n}-lab") for n in range(6)]
    events: list[Event] = []
    for n, actor in enumerate(crowd):
        events += [received(f"t{n}", "count", "John.Smith-Ward7", actor), decided(f"t{n}", "deny", actor),
                   refused(f"t{n}", "decide", actor)]  # fmt: skip
    export, vkey = write_log(tmp_path, clock, [("2026-07-15T09:00:00.000000Z", events)])
    made = transparency_report(export, vkey)
    [part] = made.as_json()["periods"]
    assert list(part["queries"]) == [UNKNOWN_AGREEMENTS]
    assert part["queries"][UNKNOWN_AGREEMENTS]["count"]["denied_by_policy"] == 6
    assert "John.Smith" not in json.dumps(made.as_json())


def test_small_counts_are_hidden_and_rare_agreements_merged(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    report = transparency_report(export, vkey).as_json()
    assert report["hidden_below"] == 5 and list(report)[-2:] == ["hidden_below", "periods"]
    [part] = report["periods"]
    merged = merged_agreements(5)
    # DSA-A and DSA-B were each asked under by fewer than 5 researchers: neither is named
    assert list(part["queries"]) == [merged] and list(part["peer_queries"]) == [merged]
    count = part["queries"][merged]["count"]
    assert {k: n for k, n in count.items() if n != 0} == {
        "released": None, "denied_by_policy": None, "refused_by_disclosure_control": None,
        "refused_at_limit": None,
    }  # fmt: skip
    assert count["pending"] == 0  # a zero stays a zero
    assert part["invalid_queries"] == 5  # five or more are shown
    assert part["invalid_federated_queries"] is None and part["auth_failures"] == 5
    assert part["consent_withdrawals"] == {"events": None, "patients": 5, "new": None}
    assert part["federated_queries"]["crosstab"] == {"released": None, "refused": None, "pending": 0}
    assert (part["organisations"], part["researchers"], part["datasets_published"]) == (None, None, None)
    assert part["glm"] == dict.fromkeys(part["glm"], None)
    assert part["policy_changes"]["dsa"] is None and part["policy_changes"]["policy"] == 0
    for name in ("DSA-A", "DSA-B"):
        assert name not in json.dumps(report)


def test_one_researchers_requests_are_not_shown(tmp_path: Path, clock: list[str]) -> None:
    """A day, or a quiet month, of one researcher's probes under an agreement nobody else uses: the report
    shows neither the agreement, nor their counts, nor that one researcher asked."""
    crowd = [Actor(f"researcher-{n}-q", f"org-{n}-lab") for n in range(5)]
    events: list[Event] = []
    for n, actor in enumerate(crowd):  # five researchers under DSA-BIG, each with one query released
        events += [received(f"b{n}", "count", "DSA-BIG", actor), decided(f"b{n}", "allow", actor),
                   executed(f"b{n}", actor), released(f"b{n}", actor)]  # fmt: skip
    probes = [
        received("a1", "count", "DSA-RARE"), decided("a1", "deny"), refused("a1", "decide"),
        received("a2", "count", "DSA-RARE"), decided("a2", "allow"), executed("a2"),
        refused("a2", "disclosure"),
        other("consent.withdrawn", {"dataset": "cohort", "patients": 1, "new": 1}, actor=STEWARD),
    ]  # fmt: skip
    export, vkey = write_log(
        tmp_path, clock, [("2026-07-15T09:00:00.000000Z", events), ("2026-08-03T09:00:00.000000Z", probes)]
    )
    args = ["audit", "report", str(export), "--key", vkey, "--period", "month"]
    as_json = runner.invoke(app, [*args, "--json"])
    human = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert as_json.exit_code == 0 and human.exit_code == 0, as_json.output + human.output
    july, august = json.loads(as_json.stdout)["periods"]
    merged = merged_agreements(5)
    assert july["queries"] == {"DSA-BIG": {"count": {**dict.fromkeys(OUTCOMES, 0), "released": 5}}}
    assert july["researchers"] == 5 and july["organisations"] == 5
    assert august["queries"] == {merged: {"count": {**dict.fromkeys(OUTCOMES, 0), "denied_by_policy": None,
                                                     "refused_by_disclosure_control": None}}}  # fmt: skip
    assert (august["researchers"], august["organisations"]) == (None, None)
    assert august["consent_withdrawals"] == {"events": None, "patients": None, "new": None}
    for output in (as_json.stdout, human.stdout):
        assert "DSA-RARE" not in output and "DSA-BIG" in output
    assert "researchers who asked" in human.stdout
    assert re.search(r"researchers who asked\s+<5\s*\n", human.stdout)
    assert re.search(r"consent withdrawals recorded\s+<5 \(<5 patients named, <5 new\)", human.stdout)
    row = next(line for line in human.stdout.splitlines() if line.startswith("│ (agreements with fewer"))
    cells = [cell.strip() for cell in row.split("│")]
    # released, denied, disclosure, rejected, other stages, cancelled, pending
    assert cells[1:9] == [f"{merged}, kind count", "0", "<5", "<5", "0", "0", "0", "0"]
    # --since/--until narrowed to the one day show no more
    day = runner.invoke(app, [*args, "--json", "--since", "2026-08-03", "--until", "2026-08-03"])
    [only] = json.loads(day.stdout)["periods"]
    assert only["queries"] == august["queries"] and only["researchers"] is None


def test_no_count_shown_is_a_sum_of_others(day_export: tuple[Path, str]) -> None:
    """Each query counts in one cell only: no total (received, by kind, by agreement, sent to a steward)
    from which a hidden cell would follow by subtraction."""
    export, vkey = day_export
    [part] = transparency_report(export, vkey, min_count=2).as_json()["periods"]
    assert "agreements" not in part
    for group in ("queries", "peer_queries"):
        for kinds in part[group].values():
            assert all(list(counts) == list(OUTCOMES) for counts in kinds.values())
    assert all(list(c) == ["released", "refused", "pending"] for c in part["federated_queries"].values())
    human = runner.invoke(app, ["audit", "report", str(export), "--key", vkey], env={"COLUMNS": "250"})
    assert "received" not in human.stdout and "sent to a steward" not in human.stdout
    assert re.search(r"policy changes\s+dsa <5\s*\n", human.stdout)


def test_the_threshold_can_be_raised_never_lowered_below_2(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    [part] = transparency_report(export, vkey, min_count=2).as_json()["periods"]
    # DSA-A: Alice and Bob; DSA-B: Alice, Bob and the digested name. Counts of 1 are hidden.
    assert list(part["queries"]) == ["DSA-A", "DSA-B"]
    assert part["queries"]["DSA-B"]["summary"]["pending"] == 2
    assert part["queries"]["DSA-B"]["summary"]["released"] is None
    three = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, "--json", "--min-count", "3"])
    assert three.exit_code == 0, three.output
    document = json.loads(three.stdout)
    assert document["hidden_below"] == 3
    assert list(document["periods"][0]["queries"]) == ["DSA-B", merged_agreements(3)]
    for low in ("1", "0"):
        result = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, "--min-count", low])
        assert result.exit_code == 2 and "--min-count" in result.output and result.stdout == ""
    for bad in (1, 0, -5):
        with pytest.raises(ValueError, match="min_count"):
            transparency_report(export, vkey, min_count=bad)


def test_the_report_names_no_one(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    human = runner.invoke(app, ["audit", "report", str(export), "--key", vkey], env={"COLUMNS": "250"})
    as_json = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, "--json"])
    assert human.exit_code == 0 and as_json.exit_code == 0, human.output + as_json.output
    assert "kind summary" in human.stdout and "researchers who asked" in human.stdout
    for output in (human.stdout, as_json.stdout):
        for name in NAMES:
            assert name not in output
            assert hashlib.sha256(name.encode()).hexdigest()[:16] not in output
        assert "sha256:" not in output and "carol" not in output
    assert json.loads(as_json.stdout)["periods"][0]["invalid_queries"] == 5


def test_human_output_shows_the_counts(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    args = ["audit", "report", str(export), "--key", vkey, "--min-count", "2"]
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Transparency report of {ORIGIN}: ")
    assert "counts from 1 to 1 are shown as <2" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "DSA-B, kind summary " in line)
    # released, denied, disclosure, rejected, other stages, cancelled, pending
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[2:9] == ["<2", "0", "0", "<2", "0", "<2", "2"]
    row = next(line for line in result.stdout.splitlines() if "DSA-A, kind count " in line)
    assert [cell.strip() for cell in row.split("│")][6] == "limit <2"
    assert "DSA-A, kind count (via a peer)" in result.stdout
    assert re.search(r"invalid queries \(refused before they were read\)\s+5\s*\n", result.stdout)
    assert re.search(
        r"invalid federated queries \(refused before any site was asked\)\s+4\s*\n", result.stdout
    )
    assert re.search(
        r"federated queries of kind count coordinated here\s+0 released, 0 refused, <2 pending", result.stdout
    )
    assert "2026-Q3 (2026-07-15 to 2026-07-15)" in result.stdout


def boundary_log(tmp_path: Path, clock: list[str]) -> tuple[Path, str]:
    """Requests on either side of midnight at the end of March and of June (UTC): the last one is received
    in June and released in July, and counts in June."""
    return write_log(
        tmp_path,
        clock,
        [
            (
                "2026-01-20T10:00:00.000000Z",
                [received("a", "count", "DSA-A"), decided("a", "allow"), released("a")],
            ),
            (
                "2026-03-31T23:59:59.999999Z",
                [received("b", "count", "DSA-A"), decided("b", "deny"), refused("b", "decide")],
            ),
            (
                "2026-04-01T00:00:00.000000Z",
                [received("c", "count", "DSA-A"), decided("c", "allow"), released("c")],
            ),
            ("2026-06-30T23:59:59.000000Z", [received("d", "summary", "DSA-A"), decided("d", "allow")]),
            (
                "2026-07-01T00:00:01.000000Z",
                [executed("d"), released("d"), other("auth.failed", {"reason": "x"})],
            ),
        ],
    )


def received_by_period(periods: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many queries of each kind each period received, summed over agreements and outcomes."""
    by_period: dict[str, dict[str, int]] = {}
    for p in periods:
        kinds = by_period[p["period"]] = {}
        for rows in p["queries"].values():
            for kind, counts in rows.items():
                kinds[kind] = kinds.get(kind, 0) + sum(counts.values())
    return by_period


def test_periods_split_at_month_and_quarter_boundaries(tmp_path: Path, clock: list[str]) -> None:
    export, vkey = boundary_log(tmp_path, clock)
    quarters = exact(export, vkey, period="quarter")
    assert received_by_period(quarters) == {
        "2026-Q1": {"count": 2}, "2026-Q2": {"count": 1, "summary": 1}, "2026-Q3": {},
    }  # fmt: skip
    q1, q2, q3 = quarters
    assert (q1["from"], q1["to"], q2["from"], q2["to"]) == (
        "2026-01-20",
        "2026-03-31",
        "2026-04-01",
        "2026-06-30",
    )
    assert (q3["from"], q3["to"]) == ("2026-07-01", "2026-07-01")  # cut by the export's last entry
    assert q1["queries"]["DSA-A"]["count"]["denied_by_policy"] == 1
    assert q2["queries"]["DSA-A"]["summary"]["released"] == 1
    assert q3["auth_failures"] == 1
    months = exact(export, vkey, period="month")
    assert received_by_period(months) == {
        "2026-01": {"count": 1}, "2026-02": {}, "2026-03": {"count": 1}, "2026-04": {"count": 1},
        "2026-05": {}, "2026-06": {"summary": 1}, "2026-07": {},
    }  # fmt: skip
    assert months[1]["from"] == "2026-02-01" and months[1]["to"] == "2026-02-28"
    assert received_by_period(exact(export, vkey, period="year")) == {"2026": {"count": 3, "summary": 1}}
    published = transparency_report(export, vkey, period="year").as_json()["periods"]
    assert [p["period"] for p in published] == ["2026"]
    assert published[0]["queries"][merged_agreements(5)]["count"]["released"] is None


def test_since_and_until_keep_only_their_days(tmp_path: Path, clock: list[str]) -> None:
    export, vkey = boundary_log(tmp_path, clock)
    spring = exact(export, vkey, since=date(2026, 3, 31), until=date(2026, 6, 29))
    assert received_by_period(spring) == {"2026-Q1": {"count": 1}, "2026-Q2": {"count": 1}}
    assert [(p["from"], p["to"]) for p in spring] == [
        ("2026-03-31", "2026-03-31"), ("2026-04-01", "2026-06-29"),
    ]  # fmt: skip
    made = transparency_report(export, vkey, since=date(2026, 3, 31), until=date(2026, 6, 29)).as_json()
    assert (made["since"], made["until"]) == ("2026-03-31", "2026-06-29")
    assert [p["period"] for p in made["periods"]] == ["2026-Q1", "2026-Q2"]
    args = ["audit", "report", str(export), "--key", vkey, "--json", "--period", "month"]
    result = runner.invoke(app, [*args, "--since", "2026-04-01", "--until", "2026-04-30"])
    assert result.exit_code == 0, result.output
    [april] = json.loads(result.stdout)["periods"]
    assert (april["period"], april["from"], april["to"]) == ("2026-04", "2026-04-01", "2026-04-30")
    assert april["queries"] == {
        merged_agreements(5): {"count": {**dict.fromkeys(OUTCOMES, 0), "released": None}}
    }
    assert transparency_report(export, vkey, since=date(2027, 1, 1)).as_json()["periods"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--period", "week"], "--period must be one of month, quarter, year"),
        (["--since", "2026-13-01"], "--since must be a day YYYY-MM-DD"),
        (["--until", "20260101"], "--until must be a day YYYY-MM-DD"),
        (["--since", "2026-05-01", "--until", "2026-04-01"], "is after --until"),
    ],
)
def test_bad_options_exit_2(day_export: tuple[Path, str], args: list[str], message: str) -> None:
    export, vkey = day_export
    result = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_tampered_export_gives_no_report(day_export: tuple[Path, str], tmp_path: Path) -> None:
    export, vkey = day_export
    data = export.read_bytes()
    assert data.count(b'"decision":"deny"') == 1
    tampered = tmp_path / "tampered.export"
    tampered.write_bytes(data.replace(b'"decision":"deny"', b'"decision":"allow"'))
    result = runner.invoke(app, ["audit", "report", str(tampered), "--key", vkey, "--json"])
    assert result.exit_code == 1 and "FAILED (altered)" in result.output
    assert "periods" not in result.stdout
    with pytest.raises(AuditIntegrityError):
        transparency_report(tampered, vkey)
    other_key = verifier_key_text(ORIGIN, Ed25519PrivateKey.generate().public_key())
    assert runner.invoke(app, ["audit", "report", str(export), "--key", other_key]).exit_code == 1
    missing = runner.invoke(app, ["audit", "report", str(tmp_path / "nowhere"), "--key", vkey])
    assert missing.exit_code == 4 and missing.stdout == ""


def test_a_release_no_decision_allowed_gives_no_report(tmp_path: Path, clock: list[str]) -> None:
    export, vkey = write_log(tmp_path, clock, [(
        "2026-07-15T09:00:00.000000Z",
        [received("r1", "count", "DSA-A"), decided("r1", "deny"), released("r1")],
    )])  # fmt: skip
    result = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, "--json"])
    assert result.exit_code == 5 and "FAILED (release_not_allowed)" in result.output
    assert result.stdout == ""


def test_too_few_witnesses_gives_no_report(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    result = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, "--min-witnesses", "1"])
    assert result.exit_code == 3 and result.stdout == ""


def test_entries_that_are_not_the_verified_ones_are_not_counted(day_export: tuple[Path, str]) -> None:
    """The counting pass re-hashes what it counts: a file changed after verification is refused."""
    export, vkey = day_export
    summary_root = transparency_report(export, vkey).root
    data = export.read_bytes().replace(b'"decision":"deny"', b'"decision":"allow"')
    with pytest.raises(AuditIntegrityError) as failed:
        _count(ExportReader(io.BytesIO(data)), _Tally(), len(session()), summary_root)
    assert failed.value.reason == "changed_while_read"
    tree = CompactRange()
    lines = data.split(b"\n")[3 : 3 + len(session())]
    tree.extend([leaf_hash(line) for line in lines])
    _count(ExportReader(io.BytesIO(data)), _Tally(), len(session()), tree.root())  # its own root: counted


def test_an_empty_log_has_no_periods(tmp_path: Path, clock: list[str]) -> None:
    export, vkey = write_log(tmp_path, clock, [])
    report = transparency_report(export, vkey)
    assert report.checkpoint_size == 0 and report.periods == ()
    result = runner.invoke(app, ["audit", "report", str(export), "--key", vkey])
    assert result.exit_code == 0 and "no entries in that time" in result.stdout


def test_docs_show_the_json_shape(day_export: tuple[Path, str]) -> None:
    """docs/audit.md's example document has the keys a report has, in its order."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "audit.md").read_text(encoding="utf-8")
    section = doc.split("## A transparency report", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert block is not None
    shown = json.loads(block.group(1))
    export, vkey = day_export
    made = transparency_report(export, vkey).as_json()
    assert list(shown) == list(made)
    assert list(shown["periods"][0]) == list(made["periods"][0])
    assert list(shown["periods"][0]["queries"]["<agreement>"]["<kind>"]) == list(OUTCOMES)
    for key in [*made["periods"][0], "hidden_below"]:
        assert f"`{key}`" in section or key in ("period", "from", "to")
