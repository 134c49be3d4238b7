"""Validation of the policy data a steward edits (policies/data/*.json); errors name file and field."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from audit.events import LABEL
from gateway.countries import is_country
from gateway.decision.errors import PolicyDataError

DATA_FILES = ("agreements", "duo", "export_control", "organisations", "site", "transfer")

_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _country(value: str) -> str:
    if not is_country(value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


def _iso_date(value: str) -> str:
    # Kept as a string: the policies compare the text, so it must be exactly YYYY-MM-DD and a real day.
    if not _DATE.match(value):
        raise ValueError(f"{value!r} is not a date written YYYY-MM-DD")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a day of the calendar") from None
    return value


Country = Annotated[str, AfterValidator(_country)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]
Text = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=1, strict=True)]


class _Strict(BaseModel):
    # The engines read the files as written, not these models: a value pydantic would coerce ("true", 1,
    # "0.5") reaches a policy as a string or number it compares unequal to the boolean or number meant,
    # so booleans, counts and numbers must have their JSON types.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DpTerms(_Strict):
    epsilon: float = Field(gt=0, strict=True)
    budget: float = Field(gt=0, strict=True)


class SiteDefaults(_Strict):
    min_cell_count: Count
    round_to: Count
    max_identical_queries: Count
    glm_min_rows: Count
    glm_max_parameter_ratio: float = Field(gt=0, le=1, strict=True)
    dp: DpTerms | None = None


class PatientConsentColumns(_Strict):
    consent_column: Text = "consent_duo"
    withdrawn_column: Text = "consent_withdrawn"


class SiteData(_Strict):
    defaults: SiteDefaults
    query_kinds: list[Text] = Field(min_length=1)
    approval_kinds: list[Text] = []
    patient_consent: PatientConsentColumns = PatientConsentColumns()


class DuoTerm(_Strict):
    abbr: Text
    label: Text
    kind: Literal["permission", "modifier"]
    parents: list[Text] = []


class DiseaseTerm(_Strict):
    label: Text
    parents: list[Text] = []


class DuoData(_Strict):
    terms: dict[Annotated[str, Field(pattern=r"^DUO:[0-9]{7}$")], DuoTerm]
    diseases: dict[Text, DiseaseTerm] = {}


class TransferData(_Strict):
    eea: list[Country]
    adequacy: dict[str, dict[Country, Text]]
    blocked: list[Country]


class Licence(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    licence_class: Text = Field(alias="class")
    not_before: IsoDate
    not_after: IsoDate
    destinations: list[Country] = Field(min_length=1)
    re_export: StrictBool


class ExportControl(_Strict):
    classified_datasets: dict[Text, Text] = {}
    licences: dict[Text, Licence] = {}


class Organisation(_Strict):
    name: Text
    country: Country
    non_profit: StrictBool


class DatasetTerms(_Strict):
    columns: list[Text] = Field(min_length=1)


class Thresholds(_Strict):
    min_cell_count: Count | None = None
    round_to: Count | None = None
    keep_zero_cells: StrictBool | None = None
    max_identical_queries: Count | None = None
    glm_min_rows: Count | None = None
    glm_max_parameter_ratio: float | None = Field(default=None, gt=0, le=1, strict=True)


class ContractualClauses(_Strict):
    id: Text
    countries: list[Country] = Field(min_length=1)


class RequiredVisa(_Strict):
    type: Text
    value: Text


class Agreement(_Strict):
    title: Text
    parties: list[Text] = Field(min_length=1)
    purposes: list[Text] = Field(min_length=1)
    diseases: list[Text] = []
    commercial_use: StrictBool
    collaboration: StrictBool = False
    return_of_results: StrictBool = False
    datasets: dict[Text, DatasetTerms] = Field(min_length=1)
    query_kinds: list[Text] = Field(min_length=1)
    approval_kinds: list[Text] = []
    not_before: IsoDate
    not_after: IsoDate
    thresholds: Thresholds = Thresholds()
    dp: DpTerms | None = None
    standard_contractual_clauses: list[ContractualClauses] = []
    export_licences: list[Text] = []
    visa: RequiredVisa | None = None
    suspended: StrictBool = False


_MODELS: dict[str, Any] = {
    "site": SiteData,
    "duo": DuoData,
    "transfer": TransferData,
    "export_control": ExportControl,
    "organisations": dict[str, Organisation],
    "agreements": dict[str, Agreement],
}


def _parse(path: Path, name: str, raw: object) -> Any:
    try:
        return TypeAdapter(_MODELS[name]).validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise PolicyDataError(path, field, message) from None


def read_data_files(data_dir: Path) -> dict[str, Any]:
    """Read every policy data file as JSON; unknown and missing files are errors."""
    if not data_dir.is_dir():
        raise PolicyDataError(data_dir, None, "policy data folder not found")
    # A name starting with a dot is a replacement being written (gateway.policy_admin), not a document.
    found = {p.stem: p for p in sorted(data_dir.glob("*.json")) if not p.name.startswith(".")}
    for stem, path in found.items():
        if stem not in DATA_FILES:
            raise PolicyDataError(
                path, None, f"unknown policy data file (expected one of {', '.join(DATA_FILES)})"
            )
    raw: dict[str, Any] = {}
    for stem in DATA_FILES:
        path = data_dir / f"{stem}.json"
        if stem not in found:
            raise PolicyDataError(path, None, "required policy data file is missing")
        try:
            raw[stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyDataError(path, None, f"cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise PolicyDataError(path, None, f"not valid JSON (line {exc.lineno}): {exc.msg}") from None
        except RecursionError:
            raise PolicyDataError(path, None, "the JSON nests too deeply") from None
    return raw


def validate_policy_data(data_dir: Path, raw: Mapping[str, Any], site_jurisdiction: str) -> None:
    """Check every file's shape, then the cross-references and the only-tighten rule for thresholds."""
    if not is_country(site_jurisdiction):
        raise PolicyDataError(data_dir, "site.jurisdiction", f"{site_jurisdiction!r} is not a country code")
    parsed = {name: _parse(data_dir / f"{name}.json", name, raw[name]) for name in DATA_FILES}
    _check_duo(data_dir / "duo.json", parsed["duo"])
    _check_site(data_dir / "site.json", parsed["site"])
    _check_transfer(data_dir / "transfer.json", parsed["transfer"])
    _check_export(data_dir / "export_control.json", parsed["export_control"])
    for dsa_id, agreement in parsed["agreements"].items():
        _check_agreement(data_dir / "agreements.json", dsa_id, agreement, parsed)


def _check_duo(path: Path, duo: DuoData) -> None:
    for code, term in duo.terms.items():
        for parent in term.parents:
            if parent not in duo.terms:
                raise PolicyDataError(path, f"terms.{code}.parents", f"{parent} is not a term of this file")
    for code, disease in duo.diseases.items():
        for parent in disease.parents:
            if parent not in duo.diseases:
                raise PolicyDataError(
                    path, f"diseases.{code}.parents", f"{parent} is not a disease of this file"
                )


def _check_site(path: Path, site: SiteData) -> None:
    for i, kind in enumerate(site.approval_kinds):
        if kind not in site.query_kinds:
            raise PolicyDataError(path, f"approval_kinds.{i}", f"{kind!r} is not one of query_kinds")


def _check_transfer(path: Path, transfer: TransferData) -> None:
    for regime in transfer.adequacy:
        if regime != "EEA" and not is_country(regime):
            raise PolicyDataError(path, f"adequacy.{regime}", "must be 'EEA' or a country code")


def _check_export(path: Path, export: ExportControl) -> None:
    for licence_id, licence in export.licences.items():
        if licence.not_after < licence.not_before:
            raise PolicyDataError(
                path,
                f"licences.{licence_id}.not_after",
                f"{licence.not_after} is before not_before {licence.not_before}",
            )


_AGREEMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
"""The query spec's AgreementId (gateway.query.spec)."""


def _check_agreement(path: Path, dsa_id: str, dsa: Agreement, parsed: Mapping[str, Any]) -> None:
    site: SiteData = parsed["site"]
    duo: DuoData = parsed["duo"]
    organisations: dict[str, Organisation] = parsed["organisations"]
    export: ExportControl = parsed["export_control"]

    def fail(field: str, message: str) -> PolicyDataError:
        return PolicyDataError(path, f"{dsa_id}.{field}", message)

    # An agreement is named in every query and in the audit log: an id either refuses could never be used.
    if not _AGREEMENT_ID.fullmatch(dsa_id) or LABEL.check(dsa_id) is not None:
        raise PolicyDataError(
            path,
            dsa_id[:128],
            "an agreement id must be letters, digits and . _ : / - (at most 128, starting with a letter or "
            "digit) that do not read as a personal identifier (a long digit run, an opaque string)",
        )
    if dsa.not_after < dsa.not_before:
        raise fail("not_after", f"{dsa.not_after} is before not_before {dsa.not_before}")
    for i, party in enumerate(dsa.parties):
        if party not in organisations:
            raise fail(f"parties.{i}", f"{party!r} is not in organisations.json")
    for i, code in enumerate(dsa.purposes):
        term = duo.terms.get(code)
        if term is None:
            raise fail(f"purposes.{i}", f"{code!r} is not a DUO code in duo.json")
        if term.kind != "permission":
            raise fail(f"purposes.{i}", f"{code} ({term.label}) is a modifier, not a research purpose")
    for i, disease in enumerate(dsa.diseases):
        if disease not in duo.diseases:
            raise fail(f"diseases.{i}", f"{disease!r} is not a disease term in duo.json")
    for i, kind in enumerate(dsa.query_kinds):
        if kind not in site.query_kinds:
            raise fail(f"query_kinds.{i}", f"{kind!r} is not an analysis kind this site offers")
    for i, kind in enumerate(dsa.approval_kinds):
        if kind not in dsa.query_kinds:
            raise fail(f"approval_kinds.{i}", f"{kind!r} is not one of the agreement's query_kinds")
    for i, licence in enumerate(dsa.export_licences):
        if licence not in export.licences:
            raise fail(f"export_licences.{i}", f"{licence!r} is not in export_control.json")
    _check_tightens(dsa, site.defaults, fail)


def _check_tightens(dsa: Agreement, defaults: SiteDefaults, fail: Any) -> None:
    """A DSA may only tighten the site's disclosure defaults, never loosen them."""
    t = dsa.thresholds
    at_least: dict[str, tuple[float | None, float]] = {
        "min_cell_count": (t.min_cell_count, defaults.min_cell_count),
        "round_to": (t.round_to, defaults.round_to),
        "glm_min_rows": (t.glm_min_rows, defaults.glm_min_rows),
    }
    for name, (value, floor) in at_least.items():
        if value is not None and value < floor:
            raise fail(f"thresholds.{name}", f"{value} is looser than the site default {floor}")
    at_most: dict[str, tuple[float | None, float]] = {
        "max_identical_queries": (t.max_identical_queries, defaults.max_identical_queries),
        "glm_max_parameter_ratio": (t.glm_max_parameter_ratio, defaults.glm_max_parameter_ratio),
    }
    for name, (value, ceiling) in at_most.items():
        if value is not None and value > ceiling:
            raise fail(f"thresholds.{name}", f"{value} is looser than the site default {ceiling}")
    if dsa.dp is not None and defaults.dp is not None:
        if dsa.dp.epsilon > defaults.dp.epsilon:
            raise fail(
                "dp.epsilon", f"{dsa.dp.epsilon} is looser than the site default {defaults.dp.epsilon}"
            )
        if dsa.dp.budget > defaults.dp.budget:
            raise fail("dp.budget", f"{dsa.dp.budget} is looser than the site default {defaults.dp.budget}")
