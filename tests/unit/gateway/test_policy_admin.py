"""Replacing policy data: validated in a scratch copy, recorded before it takes effect, undone and recorded
back should installing fail, refused with nothing changed should the record fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import copy_policies, decision_point

from gateway.decision import PolicyDecisionPoint
from gateway.policy_admin import PolicyDataRejected, replace_data


@pytest.fixture
def point(tmp_path: Path) -> PolicyDecisionPoint:
    return decision_point(copy_policies(tmp_path), tmp_path)


def _retitled(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / "data/agreements.json").read_text())
    first = next(iter(document))
    document[first]["title"] = "retitled"
    return document


def test_the_change_is_recorded_with_the_digest_it_takes_effect_with(point: PolicyDecisionPoint) -> None:
    folder = point.bundle.root
    recorded: list[tuple[str, str]] = []
    before = point.bundle.digest
    previous, bundle = replace_data(
        point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
    )
    assert previous == before and point.bundle.digest == bundle.digest != before
    assert recorded == [(before, bundle.digest)]


def test_a_change_the_log_does_not_take_is_not_made(point: PolicyDecisionPoint) -> None:
    folder = point.bundle.root
    on_disk, before = (folder / "data/agreements.json").read_bytes(), point.bundle.digest

    def unwritable(_: str, __: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_data(point, folder, "agreements", _retitled(folder), audit=unwritable)
    assert point.bundle.digest == before and (folder / "data/agreements.json").read_bytes() == on_disk


def test_a_change_that_cannot_be_installed_is_undone_and_the_way_back_recorded(
    point: PolicyDecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = point.bundle.root
    on_disk, before = (folder / "data/agreements.json").read_bytes(), point.bundle.digest
    recorded: list[tuple[str, str]] = []
    reload = point.reload
    calls = []

    def failing_once() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the policy engine is unavailable")
        return reload()

    monkeypatch.setattr(point, "reload", failing_once)
    with pytest.raises(RuntimeError, match="unavailable"):
        replace_data(
            point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
        )
    assert point.bundle.digest == before and (folder / "data/agreements.json").read_bytes() == on_disk
    (announced, undone) = recorded
    assert announced[0] == before and undone == (announced[1], before)


def test_the_way_back_is_recorded_even_when_the_engine_stays_down(
    point: PolicyDecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.decision.errors import PolicyEngineUnavailable

    folder = point.bundle.root
    on_disk, before = (folder / "data/agreements.json").read_bytes(), point.bundle.digest
    recorded: list[tuple[str, str]] = []

    def down() -> Any:
        raise PolicyEngineUnavailable("OPA at http://127.0.0.1:1 did not answer")

    monkeypatch.setattr(point, "reload", down)
    with pytest.raises(PolicyEngineUnavailable):
        replace_data(
            point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
        )
    assert (folder / "data/agreements.json").read_bytes() == on_disk and point.bundle.digest == before
    (announced, undone) = recorded
    assert undone == (announced[1], before)


def test_a_document_that_cannot_be_written_is_refused_unrecorded(
    point: PolicyDecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.policy_admin import NotWritten

    folder = point.bundle.root
    on_disk, before = (folder / "data/agreements.json").read_bytes(), point.bundle.digest
    recorded: list[tuple[str, str]] = []

    def full(target: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gateway.policy_admin._staged", full)
    with pytest.raises(NotWritten) as refused:
        replace_data(
            point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
        )
    assert refused.value.name == "agreements" and str(folder) not in str(refused.value)
    assert (folder / "data/agreements.json").read_bytes() == on_disk and point.bundle.digest == before
    assert recorded == []  # nothing changed, so nothing is on record


def test_the_change_is_not_in_place_until_it_is_recorded(point: PolicyDecisionPoint) -> None:
    """Until the record is made, the new document is in a file no process loads: a worker that loads the
    folder meanwhile (a stale generation, an engine given the bundle again, a new worker) finds the old
    bundle, and a process that dies after the record leaves a change its next start records
    (`reconcile`)."""
    folder = point.bundle.root
    before = point.bundle.digest
    seen: list[tuple[bool, str]] = []

    def record(_: str, __: str) -> None:
        in_place = "retitled" in (folder / "data/agreements.json").read_text()
        seen.append((in_place, PolicyDecisionPoint(point._settings).bundle.digest))

    replace_data(point, folder, "agreements", _retitled(folder), audit=record)
    assert seen == [(False, before)] and point.bundle.digest != before
    assert not list((folder / "data").glob(".*.json"))  # the temporary file became the document


def test_a_refused_change_is_held_by_no_worker(point: PolicyDecisionPoint) -> None:
    """A worker that loads the folder while a change is being recorded, and the record then fails, decides
    with the bundle the folder and the log agree on, never with the refused one."""
    folder = point.bundle.root
    other = PolicyDecisionPoint(point._settings)  # a second worker, which has decided nothing since
    recorded: list[tuple[str, str]] = []
    replace_data(point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b)))
    in_force = recorded[-1][1]

    def failing(_: str, __: str) -> None:
        assert other.current()  # its generation is stale: it loads the folder in the middle of the change
        raise OSError("audit log unavailable")

    document = _retitled(folder)
    document[next(iter(document))]["title"] = "refused"
    with pytest.raises(OSError, match="unavailable"):
        replace_data(point, folder, "agreements", document, audit=failing)
    assert other.current() and other.bundle.digest == in_force == point.bundle.digest
    assert "refused" not in (folder / "data/agreements.json").read_text()
    assert not list((folder / "data").glob(".*.json"))  # nothing left beside the documents


def test_a_recorded_change_that_cannot_be_put_in_place_is_recorded_back(
    point: PolicyDecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.policy_admin import NotWritten

    folder = point.bundle.root
    on_disk, before = (folder / "data/agreements.json").read_bytes(), point.bundle.digest
    recorded: list[tuple[str, str]] = []
    rename, renames = Path.replace, []

    def refused_once(self: Path, target: Path) -> Path:
        if self.name.startswith(".agreements."):
            renames.append(recorded[:])
            if len(renames) == 1:
                raise OSError(5, "Input/output error")
        return rename(self, target)

    monkeypatch.setattr(Path, "replace", refused_once)
    with pytest.raises(NotWritten):
        replace_data(
            point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
        )
    assert (folder / "data/agreements.json").read_bytes() == on_disk and point.bundle.digest == before
    (announced, undone) = recorded
    assert undone == (announced[1], before) and renames[0] == [announced]  # renamed only once on record
    assert not list((folder / "data").glob(".*.json"))


def test_a_replacement_left_half_written_is_removed_at_start(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import reconcile

    folder = point.bundle.root
    leftover = folder / "data/.agreements.k2j4h1.json"  # a process died before renaming it into place
    leftover.write_text(json.dumps(_retitled(folder)))
    digest = point.bundle.digest
    assert reconcile(point, folder, lambda: digest, lambda a, b: None) is None
    assert not leftover.exists()


def test_the_previous_bundle_is_the_folders_whichever_worker_wrote_it(point: PolicyDecisionPoint) -> None:
    folder = point.bundle.root
    other = PolicyDecisionPoint(point._settings)  # a second worker, which has decided nothing since
    recorded: list[tuple[str, str]] = []
    _, first = replace_data(
        point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
    )
    organisations = json.loads((folder / "data/organisations.json").read_text())
    next(iter(organisations.values()))["name"] = "renamed"
    previous, _ = replace_data(
        other, folder, "organisations", organisations, audit=lambda a, b: recorded.append((a, b))
    )
    assert previous == first.digest
    assert [r[0] for r in recorded] == [recorded[0][0], first.digest]  # an unbroken chain of changes


def test_a_replacement_based_on_an_old_version_is_refused(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import StaleVersion

    folder = point.bundle.root
    read = point.bundle.digest
    replace_data(point, folder, "agreements", _retitled(folder), expected=frozenset({read}))
    on_disk, now = (folder / "data/agreements.json").read_bytes(), point.bundle.digest
    other = _retitled(folder)
    other[next(iter(other))]["title"] = "retitled again"
    with pytest.raises(StaleVersion) as stale:
        replace_data(point, folder, "agreements", other, expected=frozenset({read}))
    assert stale.value.current == now
    assert (folder / "data/agreements.json").read_bytes() == on_disk and point.bundle.digest == now


def test_a_bundle_in_force_but_not_on_record_is_recorded_once(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import reconcile

    folder = point.bundle.root
    logged = point.bundle.digest
    # A process died after writing a replacement and before recording it.
    (folder / "data/agreements.json").write_text(json.dumps(_retitled(folder)))
    recorded: list[tuple[str | None, str]] = []

    def newest() -> str | None:
        return recorded[-1][1] if recorded else logged

    assert reconcile(point, folder, newest, lambda a, b: recorded.append((a, b))) is not None
    assert reconcile(point, folder, newest, lambda a, b: recorded.append((a, b))) is None
    (entry,) = recorded
    assert entry[0] == logged and entry[1] not in (logged, "")


def test_a_log_with_no_policy_change_records_the_bundle_it_starts_under(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import reconcile

    recorded: list[tuple[str | None, str]] = []
    assert reconcile(point, point.bundle.root, lambda: None, lambda a, b: recorded.append((a, b))) is not None
    assert recorded == [(None, point.bundle.digest)]


@pytest.mark.parametrize(
    ("where", "key", "value", "shown"),
    [
        ("DSA-2026-014", "MRN 4711-0815-2231", 1, "DSA-2026-014.(unknown key)"),
        ("DSA-2026-014", "parties", ["jane.doe@charite.de"], "DSA-2026-014.parties.0"),
        (None, "jane.doe@charite.de", {"title": "x"}, "(unknown key)"),
    ],
)
def test_a_refusal_names_no_key_or_value_it_does_not_know(
    point: PolicyDecisionPoint, where: str | None, key: str, value: Any, shown: str
) -> None:
    folder = point.bundle.root
    document = json.loads((folder / "data/agreements.json").read_text())
    (document[where] if where else document)[key] = value
    with pytest.raises(PolicyDataRejected) as rejected:
        replace_data(point, folder, "agreements", document)
    assert rejected.value.field == shown
    for pasted in ("4711-0815-2231", "jane.doe", "charite"):
        assert pasted not in str(rejected.value)


@pytest.mark.parametrize(
    "pasted", ["jane.doe@example.org MRN 4711-0815", "O'Brien MRN 4711-0815", "MRN 4711-0815 \\'\""]
)
def test_a_refusal_does_not_repeat_a_value_it_quotes(point: PolicyDecisionPoint, pasted: str) -> None:
    folder = point.bundle.root
    duo = json.loads((folder / "data/duo.json").read_text())
    first = next(iter(duo["terms"]))
    duo["terms"][first]["parents"] = [*duo["terms"][first]["parents"], pasted]
    with pytest.raises(PolicyDataRejected) as rejected:
        replace_data(point, folder, "duo", duo)
    assert rejected.value.field == f"terms.{first}.parents"
    assert rejected.value.message == "(a value) is not a term of this file"
    for part in ("jane", "Brien", "4711"):
        assert part not in str(rejected.value)


def test_a_file_broken_on_disk_is_named_as_such(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import BrokenOnDisk, read_data

    folder = point.bundle.root
    (folder / "data/site.json").write_text('{"defaults": {,}')
    with pytest.raises(BrokenOnDisk) as broken:
        read_data(folder, "site")
    assert broken.value.name == "site"
    with pytest.raises(BrokenOnDisk) as broken:
        replace_data(point, folder, "agreements", _retitled(folder))
    assert broken.value.name == "site" and str(folder) not in str(broken.value)


def test_a_replacement_of_the_broken_document_repairs_it(point: PolicyDecisionPoint) -> None:
    folder = point.bundle.root
    document, in_force = _retitled(folder), point.bundle.digest
    (folder / "data/agreements.json").write_text('{"DSA-TEST-OPEN": {,}')  # a hand edit
    recorded: list[tuple[str, str]] = []
    previous, bundle = replace_data(
        point, folder, "agreements", document, audit=lambda a, b: recorded.append((a, b))
    )
    # No bundle was on disk: the change is from the one still in force, the last good one.
    assert previous == in_force and recorded == [(in_force, bundle.digest)]
    assert point.bundle.digest == bundle.digest != in_force
    assert json.loads((folder / "data/agreements.json").read_text()) == document


def test_a_broken_document_is_not_repaired_when_another_file_stays_broken(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import BrokenOnDisk

    folder = point.bundle.root
    document, in_force = _retitled(folder), point.bundle.digest
    (folder / "data/agreements.json").write_bytes(b'{"DSA-TEST-OPEN": \xff')
    (folder / "data/site.json").write_text('{"defaults": {,}')
    recorded: list[tuple[str, str]] = []
    with pytest.raises((BrokenOnDisk, PolicyDataRejected)) as refused:
        replace_data(point, folder, "agreements", document, audit=lambda a, b: recorded.append((a, b)))
    assert "site.json" in str(refused.value) and not recorded and point.bundle.digest == in_force
    assert (folder / "data/agreements.json").read_bytes() == b'{"DSA-TEST-OPEN": \xff'


def test_a_repair_based_on_a_version_is_refused(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import StaleVersion

    folder = point.bundle.root
    document, in_force = _retitled(folder), point.bundle.digest
    (folder / "data/agreements.json").write_text("{")
    with pytest.raises(StaleVersion) as stale:
        replace_data(point, folder, "agreements", document, expected=frozenset({in_force}))
    assert stale.value.current is None and (folder / "data/agreements.json").read_text() == "{"


def test_a_repair_that_cannot_be_installed_puts_the_broken_file_back(
    point: PolicyDecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.decision.errors import PolicyEngineUnavailable

    folder = point.bundle.root
    document, in_force = _retitled(folder), point.bundle.digest
    broken = b'{"DSA-TEST-OPEN": \xff'  # not even UTF-8: put back as it was
    (folder / "data/agreements.json").write_bytes(broken)
    recorded: list[tuple[str, str]] = []

    def down() -> Any:
        raise PolicyEngineUnavailable("OPA at http://127.0.0.1:1 did not answer")

    monkeypatch.setattr(point, "reload", down)
    with pytest.raises(PolicyEngineUnavailable):
        replace_data(point, folder, "agreements", document, audit=lambda a, b: recorded.append((a, b)))
    assert (folder / "data/agreements.json").read_bytes() == broken and point.bundle.digest == in_force
    (announced, undone) = recorded
    assert announced[0] == in_force and undone == (announced[1], in_force)


def test_a_document_that_is_no_json_text_is_rejected_naming_it(point: PolicyDecisionPoint) -> None:
    with pytest.raises(PolicyDataRejected, match="not JSON text"):
        replace_data(point, point.bundle.root, "agreements", {"x": "\ud800"})


@pytest.mark.parametrize(
    ("value", "field"),
    [(2**64, "thresholds.min_cell_count"), (-(10**30), "thresholds.min_cell_count"), (float("nan"), "title")],
)
def test_a_number_canonical_json_cannot_hold_is_rejected_naming_its_place(
    point: PolicyDecisionPoint, value: Any, field: str
) -> None:
    folder = point.bundle.root
    before, digest = (folder / "data/agreements.json").read_text(), point.bundle.digest
    document = _retitled(folder)
    first = next(iter(document))
    place, _, leaf = field.rpartition(".")
    node = document[first]
    for step in filter(None, place.split(".")):
        node = node[step]
    node[leaf] = value
    with pytest.raises(PolicyDataRejected) as rejected:
        replace_data(point, folder, "agreements", document)
    assert rejected.value.field == f"{first}.{field}"
    assert "2**53 - 1" in rejected.value.message
    assert (folder / "data/agreements.json").read_text() == before and point.bundle.digest == digest


def test_an_unknown_document_is_no_such_document(point: PolicyDecisionPoint) -> None:
    from gateway.policy_admin import NoSuchDocument

    with pytest.raises(NoSuchDocument):
        replace_data(point, point.bundle.root, "no_such_table", {})


def test_every_process_of_the_site_decides_with_the_replaced_policy(point: PolicyDecisionPoint) -> None:
    """Two workers of `fedgate serve` hold a decision point each on one policy folder: a replacement made
    through one is what the other decides with next, and an agreement ended is ended in both."""
    import json

    from gateway.decision import DecisionInput

    folder = point.bundle.root
    other = PolicyDecisionPoint(point._settings)  # the second worker's
    request = DecisionInput.model_validate(
        {"requester": {"sub": "r-1", "org": "org-aphp", "country": "FR", "roles": ["researcher"]},
         "purpose": {"duo": ["DUO:0000006"], "ethics_approval_id": "EC-2026-077"}, "dsa": "DSA-2026-014",
         "dataset": {"id": "ds-diabetes-de", "jurisdiction": "DE", "duo": ["DUO:0000042"],
                     "columns": ["age_band", "sex", "bmi", "hba1c", "outcome"]},
         "query": {"kind": "count", "columns": ["sex"], "group_by": ["age_band"]},
         "destination": {"country": "FR"}, "now": "2026-05-01T10:00:00Z"}
    )  # fmt: skip
    assert other.decide(request).decision == "allow"
    agreements = json.loads((folder / "data/agreements.json").read_text())
    agreements["DSA-2026-014"]["not_after"] = "2026-04-30"  # the agreement ended before `now`
    _, bundle = replace_data(point, folder, "agreements", agreements)
    decided = other.decide(request)
    assert other.bundle.digest == bundle.digest and decided.decision == "deny"


@pytest.mark.parametrize("dsa_id", ["DSA-2026-000123", "dsa with spaces", "-DSA", "A" * 129])
def test_an_agreement_id_no_query_could_name_is_rejected(point: PolicyDecisionPoint, dsa_id: str) -> None:
    # A digit run of six or more reads to the audit log as a personal identifier: no query could name it.
    folder = point.bundle.root
    document = _retitled(folder)
    document[dsa_id] = document[next(iter(document))]
    with pytest.raises(PolicyDataRejected) as rejected:
        replace_data(point, folder, "agreements", document)
    assert "agreement id" in rejected.value.message


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_replaced_document_keeps_the_mode_the_site_gave_it(point: PolicyDecisionPoint, mode: int) -> None:
    folder = point.bundle.root
    path = folder / "data/agreements.json"
    path.chmod(mode)
    before = path.read_bytes()
    replace_data(point, folder, "agreements", _retitled(folder), audit=lambda a, b: None)
    assert path.read_bytes() != before and b"retitled" in path.read_bytes()
    assert path.stat().st_mode & 0o777 == mode
