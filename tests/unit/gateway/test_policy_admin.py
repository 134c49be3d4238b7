"""Replacing policy data: validated in a scratch copy, recorded before it takes effect, undone and recorded
back should installing fail, refused with nothing changed should the record fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.decision import PolicyDecisionPoint
from gateway.policy_admin import PolicyDataRejected, replace_data
from gateway.settings import SiteSettings

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.fixture
def point(tmp_path: Path) -> PolicyDecisionPoint:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    return PolicyDecisionPoint(
        SiteSettings(
            site_id="site-de",
            jurisdiction="DE",
            store_url="duckdb:///:memory:",
            audit_url="sqlite:///:memory:",
            policy_dir=folder,
            master_key_env="FEDGATE_TEST_UNUSED_KEY",
            log_key_file=tmp_path / "log.key",
        )
    )


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


def test_the_way_back_is_recorded_even_when_the_document_cannot_be_written(
    point: PolicyDecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = point.bundle.root
    on_disk, before = (folder / "data/agreements.json").read_bytes(), point.bundle.digest
    recorded: list[tuple[str, str]] = []

    def full(target: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gateway.policy_admin._write", full)
    with pytest.raises(OSError):
        replace_data(
            point, folder, "agreements", _retitled(folder), audit=lambda a, b: recorded.append((a, b))
        )
    assert (folder / "data/agreements.json").read_bytes() == on_disk and point.bundle.digest == before
    (announced, undone) = recorded
    assert undone == (announced[1], before)


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
