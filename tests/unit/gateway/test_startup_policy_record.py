"""A start records the bundle in force when the audit log's newest `policy.changed` is another (or there is
none), finding that entry where the state noted it: one entry read, not the log back to it."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.keys import generate_log_key
from audit.log import AuditLog, StoredEntry
from gateway.decision import load_bundle
from gateway.runtime import SiteRuntime
from gateway.settings import SiteSettings
from gateway.site_log import open_site_log
from gateway.state import GatewayState, PolicyRecord
from pseudonymize.keys import write_new_key

POLICIES = Path(__file__).resolve().parents[3] / "policies"
FILLERS = 50_000


@pytest.fixture
def settings(tmp_path: Path) -> SiteSettings:
    shutil.copytree(POLICIES, tmp_path / "policies", ignore=shutil.ignore_patterns("*_test.rego"))
    generate_log_key(tmp_path / "log.key")
    write_new_key(tmp_path / "master.key")
    return SiteSettings(
        site_id="site-de",
        jurisdiction="DE",
        store_url=f"duckdb:///{tmp_path / 'store.duckdb'}",
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        policy_dir=tmp_path / "policies",
        master_key_file=tmp_path / "master.key",
        log_key_file=tmp_path / "log.key",
        dev_mode=True,
    )


class _Reads:
    """Counts the audit entries a start reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries = 0
        read = AuditLog.entries

        def counted(log: AuditLog, start: int, end: int) -> list[StoredEntry]:
            got = read(log, start, end)
            self.entries += len(got)
            return got

        monkeypatch.setattr(AuditLog, "entries", counted)


def _start(settings: SiteSettings) -> None:
    runtime = SiteRuntime.start(settings)
    asyncio.run(runtime.aclose())


def _changes(settings: SiteSettings) -> list[tuple[int, dict[str, Any]]]:
    with open_site_log(settings) as log:
        entries = [json.loads(e.data) for e in log.entries(0, log.size)]
    return [(i, e["payload"]) for i, e in enumerate(entries) if e["type"] == "policy.changed"]


def _fill(settings: SiteSettings, count: int) -> None:
    """Append `count` entries that are no policy change, in one commit."""
    with open_site_log(settings) as log:
        for _ in range(count - 1):
            log.enqueue("auth.failed", payload={"reason": "filler"})
        log.append("auth.failed", payload={"reason": "filler"})


def _note(settings: SiteSettings) -> dict[str, Any] | None:
    with sa.create_engine(settings.state_url).connect() as conn:
        row = conn.execute(
            sa.text("SELECT log_index, bundle_digest, pending_from FROM policy_record")
        ).first()
    return dict(row._mapping) if row is not None else None


def _set_note(settings: SiteSettings, **values: Any) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    with sa.create_engine(settings.state_url).begin() as conn:
        conn.execute(sa.text(f"UPDATE policy_record SET {assignments}"), values)


def _edit_by_hand(settings: SiteSettings, title: str) -> str:
    """Change the folder's agreements without recording it; the digest of the bundle it now holds."""
    path = settings.policy_dir / "data/agreements.json"
    document = json.loads(path.read_text())
    document[next(iter(document))]["title"] = title
    path.write_text(json.dumps(document))
    return load_bundle(settings.policy_dir, settings.jurisdiction).digest


def test_a_log_with_no_policy_change_records_the_bundle_it_starts_under(settings: SiteSettings) -> None:
    _start(settings)
    in_force = load_bundle(settings.policy_dir, settings.jurisdiction).digest
    assert _changes(settings) == [(0, {"bundle_digest": f"sha256:{in_force}", "change": "found_at_startup"})]
    _start(settings)  # the log now says which bundle is in force: nothing more is recorded
    assert len(_changes(settings)) == 1
    assert _note(settings) == {"log_index": 0, "bundle_digest": in_force, "pending_from": None}


def test_a_start_reads_the_entry_the_state_noted_not_the_log_back_to_it(
    settings: SiteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _start(settings)
    _fill(settings, FILLERS)
    reads = _Reads(monkeypatch)
    began = time.perf_counter()
    _start(settings)
    took = time.perf_counter() - began
    assert reads.entries <= 1, f"a start read {reads.entries} audit entries"
    assert len(_changes(settings)) == 1 and took < 10
    # A change by hand is still found, by the one entry noted and nothing more of the log.
    reads.entries = 0
    in_force = _edit_by_hand(settings, "changed by hand")
    _start(settings)
    assert reads.entries <= 1
    (_, first), (index, found) = _changes(settings)
    assert index == FILLERS + 1
    assert found == {
        "bundle_digest": f"sha256:{in_force}", "previous_digest": first["bundle_digest"],
        "change": "found_at_startup",
    }  # fmt: skip
    assert _note(settings) == {"log_index": index, "bundle_digest": in_force, "pending_from": None}


@pytest.mark.parametrize(
    "stale",
    [
        {"log_index": 0},  # an entry of another bundle
        {"log_index": 2},  # no policy change
        {"log_index": 10**9},  # beyond the log: another log than the one noted
        {"bundle_digest": "0" * 64},
    ],
)
def test_a_note_the_log_does_not_bear_out_is_not_trusted(
    settings: SiteSettings, monkeypatch: pytest.MonkeyPatch, stale: dict[str, Any]
) -> None:
    _start(settings)
    in_force = _edit_by_hand(settings, "changed by hand")
    _start(settings)  # records the change at entry 1
    _fill(settings, 10)
    _set_note(settings, **stale)
    reads = _Reads(monkeypatch)
    _start(settings)
    assert reads.entries > 1  # the log was read back to its newest policy change
    assert [i for i, _ in _changes(settings)] == [0, 1]  # the log agrees with the folder: nothing recorded
    assert _note(settings) == {"log_index": 1, "bundle_digest": in_force, "pending_from": None}
    reads.entries = 0
    _start(settings)  # and the next start trusts the note it corrected
    assert reads.entries == 1


def test_a_state_with_no_note_reads_the_log_once(
    settings: SiteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _start(settings)
    in_force = _edit_by_hand(settings, "changed by hand")
    _start(settings)
    # A state database of a version that noted nothing.
    with sa.create_engine(settings.state_url).begin() as conn:
        conn.execute(sa.text("DROP TABLE policy_record"))
    reads = _Reads(monkeypatch)
    _start(settings)
    assert reads.entries == 2 and len(_changes(settings)) == 2
    assert _note(settings) == {"log_index": 1, "bundle_digest": in_force, "pending_from": None}
    reads.entries = 0
    _start(settings)
    assert reads.entries == 1


def test_a_change_appended_but_not_noted_is_found_from_where_it_was_announced(
    settings: SiteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _start(settings)
    _fill(settings, 1000)
    in_force = _edit_by_hand(settings, "replaced")
    # A replacement announced and appended, then the process stopped before noting where it landed.
    state = GatewayState(settings.state_url)
    previous = _changes(settings)[0][1]["bundle_digest"]
    with open_site_log(settings) as log:
        state.policy_change_pending(log.size)
        log.append(
            "policy.changed",
            payload={
                "bundle_digest": f"sha256:{in_force}", "previous_digest": previous,
                "change": "dsa", "name": "agreements",
            },
        )  # fmt: skip
    state.close()
    _fill(settings, 5)
    reads = _Reads(monkeypatch)
    _start(settings)
    # The noted entry, then only what was appended since the announcement: not the fillers before it.
    assert reads.entries == 1 + 6
    assert [(i, c["change"]) for i, c in _changes(settings)] == [(0, "found_at_startup"), (1001, "dsa")]
    assert _note(settings) == {"log_index": 1001, "bundle_digest": in_force, "pending_from": None}


def test_the_note_reads_from_the_first_append_not_yet_accounted_for(state: GatewayState) -> None:
    assert state.policy_record() is None
    state.policy_change_pending(10)
    state.policy_change_pending(12)  # the first append failed, and may still land
    state.policy_change_noted(12, "ab" * 32)
    assert state.policy_record() == PolicyRecord(12, "ab" * 32, pending_from=10)
    state.policy_change_noted(14, "cd" * 32)
    assert state.policy_record() == PolicyRecord(14, "cd" * 32, pending_from=None)
    state.policy_change_pending(20)
    state.policy_change_noted(21, "ef" * 32, settled=True)  # a start read the log from 20 to its end
    assert state.policy_record() == PolicyRecord(21, "ef" * 32, pending_from=None)
