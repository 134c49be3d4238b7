"""`fedgate audit report` and `audit.report.transparency_report`: public counts of what a site answered and
refused, per period, from an export that verifies, and never a name."""

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
from audit.report import OUTCOMES, QUERY_COUNTS, _count, _Tally, transparency_report
from audit.verify.reader import ExportReader
from gateway.cli import app

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


def refused(rid: str | None, stage: str, actor: Actor | None = ALICE) -> Event:
    payload = {"stage": stage, "reasons": ["refused"]}
    return "query.refused", rid, {**payload, "query_hash": digest(rid)} if rid else payload, actor


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
        # refused before it was read
        refused(None, "validate", BOB),
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


def test_every_outcome_is_counted_once_by_kind_and_by_agreement(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    report = transparency_report(export, vkey)
    assert report.origin == ORIGIN and report.period == "quarter"
    [part] = report.as_json()["periods"]
    assert (part["period"], part["from"], part["to"]) == ("2026-Q3", "2026-07-15", "2026-07-15")
    count, summary = part["queries"]["count"], part["queries"]["summary"]
    assert {k: v for k, v in count.items() if v} == {
        "received": 4, "released": 1, "denied_by_policy": 1, "refused_at_limit": 1,
        "refused_by_disclosure_control": 1,
    }  # fmt: skip
    assert {k: v for k, v in summary.items() if v} == {
        "received": 4, "released": 1, "rejected": 1, "pending": 2, "sent_to_steward": 4, "approved": 2,
    }  # fmt: skip
    assert {k: v for k, v in part["peer_queries"]["count"].items() if v} == {"received": 1, "released": 1}
    dsa_a, dsa_b = part["agreements"]["DSA-A"], part["agreements"]["DSA-B"]
    assert (dsa_a["received"], dsa_a["released"], dsa_a["denied_by_policy"]) == (4, 2, 1)
    assert (dsa_b["received"], dsa_b["refused_by_disclosure_control"], dsa_b["rejected"]) == (5, 1, 1)
    for group in ("queries", "peer_queries", "agreements"):
        for counts in part[group].values():
            assert sum(counts[o] for o in OUTCOMES) == counts["received"]
    assert part["invalid_queries"] == 1
    assert part["federated_queries"] == {
        "count": {"received": 1, "released": 0, "refused": 0, "pending": 1},
        "crosstab": {"received": 2, "released": 1, "refused": 1, "pending": 0},
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


def test_the_report_names_no_one(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    human = runner.invoke(app, ["audit", "report", str(export), "--key", vkey], env={"COLUMNS": "250"})
    as_json = runner.invoke(app, ["audit", "report", str(export), "--key", vkey, "--json"])
    assert human.exit_code == 0 and as_json.exit_code == 0, human.output + as_json.output
    assert (
        "kind summary" in human.stdout and "DSA-B" in human.stdout and "researchers who asked" in human.stdout
    )
    for output in (human.stdout, as_json.stdout):
        for name in NAMES:
            assert name not in output
            assert hashlib.sha256(name.encode()).hexdigest()[:16] not in output
        assert "sha256:" not in output and "carol" not in output
    assert json.loads(as_json.stdout)["periods"][0]["queries"]["count"]["released"] == 1


def test_human_output_shows_the_counts(day_export: tuple[Path, str]) -> None:
    export, vkey = day_export
    result = runner.invoke(app, ["audit", "report", str(export), "--key", vkey], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Transparency report of {ORIGIN}: ")
    row = next(line for line in result.stdout.splitlines() if "kind count " in line)
    # received, released, denied, disclosure, rejected, other stages, pending, to a steward, approved
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[2:11] == ["4", "1", "1", "1", "0", "limit 1", "0", "0", "0"]
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


def received_by_period(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {p["period"]: {kind: c["received"] for kind, c in p["queries"].items()} for p in report["periods"]}


def test_periods_split_at_month_and_quarter_boundaries(tmp_path: Path, clock: list[str]) -> None:
    export, vkey = boundary_log(tmp_path, clock)
    quarters = transparency_report(export, vkey, period="quarter").as_json()
    assert received_by_period(quarters) == {
        "2026-Q1": {"count": 2}, "2026-Q2": {"count": 1, "summary": 1}, "2026-Q3": {},
    }  # fmt: skip
    q1, q2, q3 = quarters["periods"]
    assert (q1["from"], q1["to"], q2["from"], q2["to"]) == (
        "2026-01-20",
        "2026-03-31",
        "2026-04-01",
        "2026-06-30",
    )
    assert (q3["from"], q3["to"]) == ("2026-07-01", "2026-07-01")  # cut by the export's last entry
    assert q1["queries"]["count"]["denied_by_policy"] == 1 and q2["queries"]["summary"]["released"] == 1
    assert q3["auth_failures"] == 1
    months = transparency_report(export, vkey, period="month").as_json()
    assert received_by_period(months) == {
        "2026-01": {"count": 1}, "2026-02": {}, "2026-03": {"count": 1}, "2026-04": {"count": 1},
        "2026-05": {}, "2026-06": {"summary": 1}, "2026-07": {},
    }  # fmt: skip
    assert months["periods"][1]["from"] == "2026-02-01" and months["periods"][1]["to"] == "2026-02-28"
    years = transparency_report(export, vkey, period="year").as_json()
    assert received_by_period(years) == {"2026": {"count": 3, "summary": 1}}


def test_since_and_until_keep_only_their_days(tmp_path: Path, clock: list[str]) -> None:
    export, vkey = boundary_log(tmp_path, clock)
    spring = transparency_report(export, vkey, since=date(2026, 3, 31), until=date(2026, 6, 29)).as_json()
    assert (spring["since"], spring["until"]) == ("2026-03-31", "2026-06-29")
    assert received_by_period(spring) == {"2026-Q1": {"count": 1}, "2026-Q2": {"count": 1}}
    assert [(p["from"], p["to"]) for p in spring["periods"]] == [
        ("2026-03-31", "2026-03-31"), ("2026-04-01", "2026-06-29"),
    ]  # fmt: skip
    args = ["audit", "report", str(export), "--key", vkey, "--json", "--period", "month"]
    result = runner.invoke(app, [*args, "--since", "2026-04-01", "--until", "2026-04-30"])
    assert result.exit_code == 0, result.output
    assert received_by_period(json.loads(result.stdout)) == {"2026-04": {"count": 1}}
    later = transparency_report(export, vkey, since=date(2027, 1, 1)).as_json()
    assert later["periods"] == []


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
    assert list(shown["periods"][0]["queries"]["<kind>"]) == list(QUERY_COUNTS)
    for key in made["periods"][0]:
        assert f"`{key}`" in section or key in ("period", "from", "to")
