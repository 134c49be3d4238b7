"""What ends soon: agreements, export licences and datasets' time limits on use that have ended or end
within a window, so that a steward sees them before queries start being denied.

Pure: the caller passes the policy data (as a bundle holds it, `PolicyBundle.data`, or as the folder's
files read it), the catalog's entries and today's date. A date is a whole UTC day, as the policies read
`not_after` and `use_until` (policies/lib/lib.rego, `after_day`): a term is in force through its last day
and has ended from the day after, so on its last day `days_left` is 0 and it is still "ending".

Policy data is validated before it is loaded, and the catalog's terms at ingest, but a date that cannot be
read here is reported as an entry of status "invalid" whose `reason` names the document and the field,
never an error.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pseudonymize.store import CatalogEntry

Kind = Literal["agreement", "dataset_use", "export_licence"]
Status = Literal["ended", "ending", "invalid"]

DEFAULT_WITHIN_DAYS: Final = 90
MAX_WITHIN_DAYS: Final = 3650
"""The widest window asked for: ten years."""
TIME_LIMIT_ON_USE: Final = "DUO:0000025"
"""The DUO code whose `use_until` ends the use of a dataset (the consent policy denies after it)."""

_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHOWN: Final = 40  # the most characters of a bad value a reason quotes
_MISSING: Final[Any] = object()


@dataclass(frozen=True)
class Ending:
    """One term that has ended, ends within the window, or whose end cannot be read."""

    kind: Kind
    id: str
    ends: str | None
    """The last day the term is in force, YYYY-MM-DD; None when it cannot be read (status "invalid")."""
    days_left: int | None
    """Days from today to `ends`: 0 on the last day, negative once ended; None when "invalid"."""
    status: Status
    affects: tuple[str, ...]
    """For a licence the agreements that name it; for an agreement its datasets; for a dataset the
    agreements that name it."""
    reason: str | None = None
    """Why an "invalid" entry has no date: the document and field, and what is wrong."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "ends": self.ends,
            "days_left": self.days_left,
            "status": self.status,
            "affects": list(self.affects),
            "reason": self.reason,
        }

    def sort_key(self) -> tuple[str, str, str]:
        # Entries without a date come first: they are the ones the policies may already deny on.
        return (self.ends or "", self.kind, self.id)


def utc_today() -> dt.date:
    """Today as the policies see it: the UTC day."""
    return dt.datetime.now(dt.UTC).date()


def expiring(
    policy_data: Mapping[str, Any],
    catalog: Iterable[CatalogEntry],
    *,
    today: dt.date,
    within_days: int,
) -> list[Ending]:
    """Every agreement, export licence and dataset time limit on use that has ended before `today` or ends
    within `within_days` days of it (inclusive), and every one whose end cannot be read; sorted by `ends`
    (those without one first), then kind, then id. `catalog` may hold every published version: each
    dataset is judged by its newest, as a query is."""
    if within_days < 0:
        raise ValueError("within_days must not be negative")
    agreements = policy_data.get("agreements")
    found: list[Ending] = []
    if not isinstance(agreements, Mapping):
        problem = "missing" if agreements is None else "not an object"
        found.append(_invalid("agreement", "agreements.json", (), f"agreements.json: {problem}"))
        agreements = {}
    named_licences: dict[str, list[str]] = {}
    naming_datasets: dict[str, list[str]] = {}
    for dsa_id, dsa in agreements.items():
        dsa_id = str(dsa_id)
        if not isinstance(dsa, Mapping):
            found.append(_invalid("agreement", dsa_id, (), f"agreements.json: {dsa_id}: not an object"))
            continue
        datasets = dsa.get("datasets")
        covered = tuple(sorted(str(d) for d in datasets)) if isinstance(datasets, Mapping) else ()
        for dataset in covered:
            naming_datasets.setdefault(dataset, []).append(dsa_id)
        licences = dsa.get("export_licences")
        if isinstance(licences, list):
            for licence in licences:
                if isinstance(licence, str):
                    named_licences.setdefault(licence, []).append(dsa_id)
        where = f"agreements.json: {dsa_id}.not_after"
        found.append(_judge("agreement", dsa_id, dsa.get("not_after", _MISSING), where, covered, today))

    export = policy_data.get("export_control")
    # An absent `licences` is a site without any (the validated default).
    held = export.get("licences", {}) if isinstance(export, Mapping) else export
    if held is not None and not isinstance(held, Mapping):
        where = "licences" if isinstance(export, Mapping) else "the document"
        reason = f"export_control.json: {where}: not an object"
        found.append(_invalid("export_licence", "export_control.json", (), reason))
    if not isinstance(held, Mapping):
        held = {}
    for licence_id in sorted({*map(str, held), *named_licences}):
        naming = tuple(sorted(set(named_licences.get(licence_id, ()))))
        licence = held.get(licence_id, _MISSING)
        if licence is _MISSING:
            named_by = ", ".join(f"agreements.json: {a}.export_licences" for a in naming)
            reason = f"export_control.json: licences.{licence_id}: missing (named by {named_by})"
            found.append(_invalid("export_licence", licence_id, naming, reason))
        elif not isinstance(licence, Mapping):
            reason = f"export_control.json: licences.{licence_id}: not an object"
            found.append(_invalid("export_licence", licence_id, naming, reason))
        else:
            where = f"export_control.json: licences.{licence_id}.not_after"
            found.append(
                _judge("export_licence", licence_id, licence.get("not_after", _MISSING), where, naming, today)
            )

    for entry in _newest(catalog):
        if TIME_LIMIT_ON_USE not in entry.duo:
            continue  # no time limit on use: the policy reads no `use_until`
        naming = tuple(sorted(set(naming_datasets.get(entry.dataset, ()))))
        until = entry.consent_terms.use_until
        where = f"catalog: {entry.dataset} v{entry.version} consent_terms.use_until"
        if until is None:
            reason = (
                f"{where}: missing, though the dataset carries {TIME_LIMIT_ON_USE} (a time limit on use): "
                "the policy denies every query of it"
            )
            found.append(_invalid("dataset_use", entry.dataset, naming, reason))
        else:
            found.append(_judge("dataset_use", entry.dataset, until.isoformat(), where, naming, today))

    return sorted((e for e in found if _within(e, within_days)), key=Ending.sort_key)


def listing(items: list[Ending], today: dt.date, within_days: int) -> dict[str, Any]:
    """What `GET /v1/steward/expiring` answers and `fedgate policy expiring --json` prints."""
    return {"today": today.isoformat(), "within_days": within_days, "items": [i.to_dict() for i in items]}


def _within(entry: Ending, within_days: int) -> bool:
    return entry.days_left is None or entry.days_left <= within_days


def _newest(catalog: Iterable[CatalogEntry]) -> list[CatalogEntry]:
    newest: dict[str, CatalogEntry] = {}
    for entry in catalog:
        held = newest.get(entry.dataset)
        if held is None or entry.version > held.version:
            newest[entry.dataset] = entry
    return list(newest.values())


def _invalid(kind: Kind, term_id: str, affects: tuple[str, ...], reason: str) -> Ending:
    return Ending(kind, term_id, None, None, "invalid", affects, reason)


def _judge(
    kind: Kind, term_id: str, value: Any, where: str, affects: tuple[str, ...], today: dt.date
) -> Ending:
    """The entry of a term whose last day is `value`, read as the policies read it (YYYY-MM-DD text)."""
    day, problem = _day(value)
    if day is None:
        return _invalid(kind, term_id, affects, f"{where}: {problem}")
    days_left = (day - today).days
    return Ending(kind, term_id, day.isoformat(), days_left, "ended" if days_left < 0 else "ending", affects)


def _day(value: Any) -> tuple[dt.date | None, str]:
    if value is _MISSING or value is None:
        return None, "missing"
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return None, f"{_shown(value)} is not a date written YYYY-MM-DD"
    try:
        return dt.date.fromisoformat(value), ""
    except ValueError:
        return None, f"{_shown(value)} is not a day of the calendar"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 1]}…"
