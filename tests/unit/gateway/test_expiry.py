"""What ends soon (gateway.expiry): agreements, export licences and datasets' time limits on use that have
ended or end within the window, dated by the UTC day as the policies date them; unreadable ends are listed
as invalid, never raised."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.decision import DecisionInput, decide, load_bundle
from gateway.decision.embedded import EmbeddedEngine
from gateway.expiry import Ending, expiring
from pseudonymize.store import CatalogEntry, ConsentTerms

ROOT = Path(__file__).resolve().parents[3]
TODAY = dt.date(2026, 5, 10)


def day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


def agreement(not_after: Any, *datasets: str, licences: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "not_before": "2026-01-01",
        "not_after": not_after,
        "datasets": {d: {"columns": ["sex"]} for d in datasets or ("ds-a",)},
        "export_licences": list(licences),
    }


def licence(not_after: Any) -> dict[str, Any]:
    return {"class": "GEN", "not_before": "2026-01-01", "not_after": not_after, "destinations": ["DE"]}


def entry(dataset: str, version: int, duo: list[str], use_until: dt.date | None) -> CatalogEntry:
    return CatalogEntry(
        dataset=dataset, version=version, table_name=f"ds_{dataset}__v{version}",
        published_at="2026-01-01T00:00:00Z", row_count=1, columns=[], content_digest="c", spec_digest="s",
        key_id="k", key_context="x", duo=duo, jurisdiction="DE",
        consent_terms=ConsentTerms(use_until=use_until),
    )  # fmt: skip


def listed(data: dict[str, Any], catalog: list[CatalogEntry] | None = None, within: int = 30) -> list[Ending]:
    return expiring(data, catalog or [], today=TODAY, within_days=within)


def by_id(items: list[Ending]) -> dict[str, Ending]:
    return {i.id: i for i in items}


def test_ended_ending_and_beyond_the_window() -> None:
    data = {
        "agreements": {
            "DSA-LONG-ENDED": agreement("2020-12-31"),
            "DSA-ENDED": agreement(day(-1)),
            "DSA-SOON": agreement(day(12)),
            "DSA-LAST-DAY-OF-WINDOW": agreement(day(30)),
            "DSA-LATER": agreement(day(31)),
        },
        "export_control": {"licences": {}},
    }
    items = by_id(listed(data))
    assert set(items) == {"DSA-LONG-ENDED", "DSA-ENDED", "DSA-SOON", "DSA-LAST-DAY-OF-WINDOW"}
    assert items["DSA-ENDED"] == Ending("agreement", "DSA-ENDED", day(-1), -1, "ended", ("ds-a",))
    assert (items["DSA-SOON"].status, items["DSA-SOON"].days_left) == ("ending", 12)
    assert items["DSA-LONG-ENDED"].status == "ended"  # an ended term is listed whatever the window
    assert "DSA-LATER" in by_id(listed(data, within=31))


def test_today_is_the_last_day_in_force_not_an_ended_one() -> None:
    data = {"agreements": {"DSA-TODAY": agreement(day(0)), "DSA-YESTERDAY": agreement(day(-1))}}
    items = by_id(listed(data, within=0))
    assert (items["DSA-TODAY"].status, items["DSA-TODAY"].days_left) == ("ending", 0)
    assert (items["DSA-YESTERDAY"].status, items["DSA-YESTERDAY"].days_left) == ("ended", -1)


def test_the_day_rule_is_the_policys() -> None:
    # DSA-2026-014 of the shipped data ends on 2026-06-30: the policy denies it from 2026-07-01 (UTC) on.
    bundle = load_bundle(ROOT / "policies", "DE")
    engine = EmbeddedEngine(bundle)
    request = {
        "requester": {"sub": "r-1", "org": "org-aphp", "country": "FR", "roles": ["researcher"]},
        "purpose": {"duo": ["DUO:0000006"]},
        "dsa": "DSA-2026-014",
        "dataset": {"id": "ds-diabetes-de", "jurisdiction": "DE", "duo": ["DUO:0000042"], "columns": ["sex"]},
        "query": {"kind": "count", "columns": ["sex"]},
        "destination": {"country": "FR"},
    }
    expired = "DSA-2026-014 expired on 2026-06-30"
    for now, status in (("2026-06-30T23:59:59Z", "ending"), ("2026-07-01T00:00:00Z", "ended")):
        today = dt.date.fromisoformat(now[:10])
        (term,) = [i for i in expiring(bundle.data, [], today=today, within_days=0) if i.id == "DSA-2026-014"]
        decision = decide(engine, DecisionInput.model_validate({**request, "now": now}))
        assert term.status == status
        assert (expired in decision.reasons) == (status == "ended"), decision.reasons


def test_a_licence_affects_the_agreements_that_name_it() -> None:
    data = {
        "agreements": {
            "DSA-B": agreement(day(400), "ds-x", licences=("EXL-1",)),
            "DSA-A": agreement(day(400), "ds-y", "ds-x", licences=("EXL-1", "EXL-2")),
        },
        "export_control": {
            "licences": {"EXL-1": licence(day(5)), "EXL-2": licence(day(900)), "EXL-3": licence(day(-3))}
        },
    }
    items = by_id(listed(data))
    assert items["EXL-1"] == Ending("export_licence", "EXL-1", day(5), 5, "ending", ("DSA-A", "DSA-B"))
    assert items["EXL-3"].affects == () and items["EXL-3"].status == "ended"
    assert "EXL-2" not in items
    assert by_id(listed(data, within=400))["DSA-A"].affects == ("ds-x", "ds-y")


def test_a_datasets_time_limit_on_use_from_its_newest_version() -> None:
    data = {
        "agreements": {"DSA-A": agreement(day(900), "ds-limited"), "DSA-B": agreement(day(900), "ds-limited")}
    }
    catalog = [
        entry("ds-limited", 1, ["DUO:0000042", "DUO:0000025"], TODAY + dt.timedelta(days=400)),
        entry("ds-limited", 2, ["DUO:0000042", "DUO:0000025"], TODAY + dt.timedelta(days=7)),
        entry("ds-unlimited", 1, ["DUO:0000042"], None),
        entry("ds-old", 1, ["DUO:0000025"], TODAY - dt.timedelta(days=1)),
        entry("ds-old", 3, ["DUO:0000042"], None),  # the newest version carries no time limit
    ]
    assert listed(data, catalog) == [
        Ending("dataset_use", "ds-limited", day(7), 7, "ending", ("DSA-A", "DSA-B")),
    ]


def test_invalid_and_missing_dates_are_listed_naming_document_and_field() -> None:
    data = {
        "agreements": {
            "DSA-NO-END": {k: v for k, v in agreement("x").items() if k != "not_after"},
            "DSA-NOT-A-DAY": agreement("2026-02-30"),
            "DSA-SHAPE": agreement("2026-7-1", licences=("EXL-GONE",)),
            "DSA-NUMBER": agreement(20260701),
            "DSA-NOT-AN-OBJECT": ["not", "an", "agreement"],
        },
        "export_control": {"licences": {"EXL-BAD": licence(None)}},
    }
    catalog = [entry("ds-unrecorded", 2, ["DUO:0000025"], None)]
    items = listed(data, catalog, within=0)
    assert all(i.status == "invalid" and i.ends is None and i.days_left is None for i in items)
    assert {i.id: i.reason for i in items} == {
        "DSA-NO-END": "agreements.json: DSA-NO-END.not_after: missing",
        "DSA-NOT-A-DAY": "agreements.json: DSA-NOT-A-DAY.not_after: '2026-02-30' is not a day of the "
        "calendar",
        "DSA-SHAPE": "agreements.json: DSA-SHAPE.not_after: '2026-7-1' is not a date written YYYY-MM-DD",
        "DSA-NUMBER": "agreements.json: DSA-NUMBER.not_after: 20260701 is not a date written YYYY-MM-DD",
        "DSA-NOT-AN-OBJECT": "agreements.json: DSA-NOT-AN-OBJECT: not an object",
        "EXL-BAD": "export_control.json: licences.EXL-BAD.not_after: missing",
        "EXL-GONE": "export_control.json: licences.EXL-GONE: missing (named by agreements.json: "
        "DSA-SHAPE.export_licences)",
        "ds-unrecorded": "catalog: ds-unrecorded v2 consent_terms.use_until: missing, though the dataset "
        "carries DUO:0000025 (a time limit on use): the policy denies every query of it",
    }


@pytest.mark.parametrize("data", [{}, {"agreements": [], "export_control": "x"}, {"agreements": None}])
def test_documents_of_the_wrong_shape_are_reported_not_raised(data: dict[str, Any]) -> None:
    items = listed(data)
    assert items and all(i.status == "invalid" and i.reason for i in items)


def test_sorted_by_end_then_kind_then_id_with_undated_first() -> None:
    data = {
        "agreements": {
            "DSA-2": agreement(day(3), licences=("EXL-1",)),
            "DSA-1": agreement(day(3)),
            "DSA-0": agreement(day(-2)),
            "DSA-BAD": agreement("soon"),
        },
        "export_control": {"licences": {"EXL-1": licence(day(3)), "EXL-0": licence(day(1))}},
    }
    catalog = [entry("ds-a", 1, ["DUO:0000025"], TODAY + dt.timedelta(days=3))]
    assert [(i.ends, i.kind, i.id) for i in listed(data, catalog)] == [
        (None, "agreement", "DSA-BAD"),
        (day(-2), "agreement", "DSA-0"),
        (day(1), "export_licence", "EXL-0"),
        (day(3), "agreement", "DSA-1"),
        (day(3), "agreement", "DSA-2"),
        (day(3), "dataset_use", "ds-a"),
        (day(3), "export_licence", "EXL-1"),
    ]


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="within_days"):
        listed({"agreements": {}}, within=-1)


def test_the_example_in_the_docs_is_what_the_shipped_data_gives() -> None:
    section = (ROOT / "docs/policy.md").read_text().split("## What ends soon", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert block is not None
    documented = json.loads(block.group(1))
    today = dt.date.fromisoformat(documented["today"])
    items = expiring(load_bundle(ROOT / "policies", "DE").data, [], today=today, within_days=90)
    assert documented == {
        "today": today.isoformat(),
        "within_days": 90,
        "items": [i.to_dict() for i in items],
    }
