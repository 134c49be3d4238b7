"""Validation of the policy data a steward edits (policies/data/*.json); errors name file and field."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from audit.events import LABEL
from gateway.countries import is_country
from gateway.decision.errors import PolicyDataError
from gateway.query.spec import SAFE_INT, ColumnName

DATA_FILES = ("agreements", "duo", "export_control", "organisations", "site", "transfer")

MAX_TERMS = 20_000
"""The most DUO terms, and the most disease terms, duo.json may hold: DUO has some fifty, and a site's disease
list is a slice of an ontology (all of MONDO's diseases would not fit, nor be needed)."""
MAX_DEPTH = 64
"""The most parent steps from a term up to a root of its hierarchy: DUO is 4 deep, MONDO under 30."""
MAX_ANCESTRY = 250_000
"""The most entries the derived ancestor table of the terms, or of the diseases, may hold (each term lists
itself and every ancestor): the bundle stores that table and the policies evaluate tables over it at load,
so it bounds what one document costs to load, whatever the shape of its hierarchy."""

MAX_ETHICS_APPROVALS = 1_000
"""The most ethics approval ids one agreement may list: the approvals of its projects, each verified by a
steward; the policies test a purpose's id against the list on every request that needs one."""

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


def _absolute_url(value: str) -> str:
    # What the gateway requires of a visa's source (gateway.auth.visas), so that a visa can match it.
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or not parts.netloc or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an absolute URL")
    return value


Country = Annotated[str, AfterValidator(_country)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]
Text = Annotated[str, Field(min_length=1)]
# As long as the policy input's names (gateway.decision.models.Name): a longer one could never match.
InputName = Annotated[str, Field(min_length=1, max_length=256)]
# RFC 8785, which the bundle digest is computed with, takes integers up to 2**53 - 1, and no infinity or NaN
# (which Python's JSON reader accepts as `Infinity` and `NaN`).
Count = Annotated[int, Field(ge=1, le=SAFE_INT, strict=True)]
Positive = Annotated[float, Field(gt=0, le=SAFE_INT, strict=True, allow_inf_nan=False)]
Ratio = Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)]


def _not_null(instead: str) -> BeforeValidator:
    """Refuse an explicit null where the policies read the key with a default (`object.get(t, k, default)`):
    there a null is not the default but a value, which breaks or changes every decision it reaches."""

    def check(value: object) -> object:
        if value is None:
            raise PydanticCustomError(
                "null_not_allowed", "null is not allowed: {instead}", {"instead": instead}
            )
        return value

    return BeforeValidator(check)


_THRESHOLD_NOT_NULL = _not_null("omit the key to use the site default")


class _Strict(BaseModel):
    # The engines read the files as written, not these models: a value pydantic would coerce ("true", 1,
    # "0.5") reaches a policy as a string or number it compares unequal to the boolean or number meant,
    # so booleans, counts and numbers must have their JSON types.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DpTerms(_Strict):
    epsilon: Positive
    budget: Positive


class SiteDefaults(_Strict):
    min_cell_count: Count
    round_to: Count
    max_identical_queries: Count
    glm_min_rows: Count
    glm_max_parameter_ratio: Ratio
    dp: DpTerms | None = None  # null and absent alike: the policies read it with object.get(..., null)


class PatientConsentColumns(_Strict):
    # The decision names them in its consent_filter obligation, which must be a column a query can name.
    consent_column: ColumnName = "consent_duo"
    withdrawn_column: ColumnName = "consent_withdrawn"


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
    # Absent means the site default; a null would reach the policies as a value (min({20, null}) is null).
    min_cell_count: Annotated[Count | None, _THRESHOLD_NOT_NULL] = None
    round_to: Annotated[Count | None, _THRESHOLD_NOT_NULL] = None
    keep_zero_cells: Annotated[StrictBool | None, _THRESHOLD_NOT_NULL] = None
    max_identical_queries: Annotated[Count | None, _THRESHOLD_NOT_NULL] = None
    glm_min_rows: Annotated[Count | None, _THRESHOLD_NOT_NULL] = None
    glm_max_parameter_ratio: Annotated[Ratio | None, _THRESHOLD_NOT_NULL] = None


class ContractualClauses(_Strict):
    id: Text
    countries: list[Country] = Field(min_length=1)


AssertedBy = Literal["self", "peer", "system", "so", "dac"]
"""Who asserted a visa, as the GA4GH Passport specification spells its `by`."""


class RequiredVisa(_Strict):
    type: InputName
    value: InputName
    # The policies read `by` with the default ["dac"]; a null would accept no visa at all.
    by: list[AssertedBy] = Field(default=["dac"], min_length=1)
    # null and absent alike: any source (the policies read it with object.get(..., null)).
    source: Annotated[InputName, AfterValidator(_absolute_url)] | None = None


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
    dp: DpTerms | None = None  # null and absent alike: the policies read it with object.get(..., null)
    standard_contractual_clauses: list[ContractualClauses] = []
    export_licences: list[Text] = []
    # The policies test `_dsa.visa` itself, so a null would ask for a visa no requester can hold.
    visa: Annotated[RequiredVisa | None, _not_null("omit the key when no visa is required")] = None
    # The ethics approvals a steward verified for the agreement's projects: only these satisfy DUO:0000021.
    ethics_approvals: list[InputName] = Field(default=[], max_length=MAX_ETHICS_APPROVALS)
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


class HierarchyError(ValueError):
    """A term whose parents form a cycle, or make the hierarchy deeper or larger than the limits allow."""

    def __init__(self, term: str | None, message: str) -> None:
        super().__init__(f"{term}: {message}" if term else message)
        self.term = term
        self.message = message


def ancestor_sets(parents: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    """Every term with the terms reachable from it over `parents` (itself included).

    Each term's set is the union of its parents' sets, computed once, so the cost is that of the table
    itself rather than of walking the graph again from every term; the table is bounded (MAX_DEPTH,
    MAX_ANCESTRY) and a cycle refused, each raising HierarchyError as soon as it is found. A parent that
    is not a key counts as a root (the validation refuses such a parent first).
    """
    table: dict[str, frozenset[str]] = {}
    depth: dict[str, int] = {}
    total = 0
    for start in parents:
        if start in table:
            continue
        # Depth first, without recursion: `path` is the chain being followed, each with its parents to go.
        path = [(start, iter(parents.get(start, ())))]
        on_path = {start}
        while path:
            term, todo = path[-1]
            for parent in todo:
                if parent in table:
                    continue
                if parent in on_path:
                    raise HierarchyError(term, f"the parents form a cycle ({parent!r} is its own ancestor)")
                if len(path) > MAX_DEPTH:
                    raise HierarchyError(start, f"more than {MAX_DEPTH} parent steps below a root")
                path.append((parent, iter(parents.get(parent, ()))))
                on_path.add(parent)
                break
            else:
                path.pop()
                on_path.discard(term)
                above = [p for p in parents.get(term, ()) if p in table]
                depth[term] = 1 + max((depth[p] for p in above), default=-1)
                if depth[term] > MAX_DEPTH:
                    raise HierarchyError(term, f"more than {MAX_DEPTH} parent steps below a root")
                table[term] = frozenset((term,)).union(*(table[p] for p in above))
                total += len(table[term])
                if total > MAX_ANCESTRY:
                    raise HierarchyError(
                        None, f"the terms and their ancestors add up to more than {MAX_ANCESTRY:,} entries"
                    )
    return table


def _check_duo(path: Path, duo: DuoData) -> None:
    hierarchies: dict[str, tuple[str, Mapping[str, DuoTerm | DiseaseTerm]]] = {
        "terms": ("term", duo.terms),
        "diseases": ("disease", duo.diseases),
    }
    for table, (noun, terms) in hierarchies.items():
        if len(terms) > MAX_TERMS:
            raise PolicyDataError(path, table, f"{len(terms):,} {noun}s; at most {MAX_TERMS:,} are allowed")
        for code, term in terms.items():
            for parent in term.parents:
                if parent not in terms:
                    raise PolicyDataError(
                        path, f"{table}.{code}.parents", f"{parent!r} is not a {noun} of this file"
                    )
        try:
            ancestor_sets({code: term.parents for code, term in terms.items()})
        except HierarchyError as exc:
            field = f"{table}.{exc.term}.parents" if exc.term else table
            raise PolicyDataError(path, field, exc.message) from None


def _check_site(path: Path, site: SiteData) -> None:
    columns = site.patient_consent
    if columns.withdrawn_column == columns.consent_column:
        raise PolicyDataError(
            path, "patient_consent.withdrawn_column", "must be another column than consent_column"
        )
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
                f"'{licence.not_after}' is before not_before '{licence.not_before}'",
            )


DISEASE_SPECIFIC = "DUO:0000007"

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
        raise fail("not_after", f"'{dsa.not_after}' is before not_before '{dsa.not_before}'")
    for i, party in enumerate(dsa.parties):
        if party not in organisations:
            raise fail(f"parties.{i}", f"{party!r} is not in organisations.json")
    for i, code in enumerate(dsa.purposes):
        term = duo.terms.get(code)
        if term is None:
            raise fail(f"purposes.{i}", f"{code!r} is not a DUO code in duo.json")
        if term.kind != "permission":
            raise fail(f"purposes.{i}", f"{code!r} is a modifier, not a research purpose: {term.label!r}")
    for i, disease in enumerate(dsa.diseases):
        if disease not in duo.diseases:
            raise fail(f"diseases.{i}", f"{disease!r} is not a disease term in duo.json")
    if DISEASE_SPECIFIC in dsa.purposes and not dsa.diseases:
        raise fail(
            "diseases",
            f"disease-specific research ({DISEASE_SPECIFIC}) is one of the purposes, so the agreement must "
            "list the diseases it covers",
        )
    if dsa.visa is not None and dsa.visa.type == "ControlledAccessGrants" and "self" in dsa.visa.by:
        raise fail(
            f"visa.by.{dsa.visa.by.index('self')}",
            "'self' is never accepted for ControlledAccessGrants: researchers cannot grant themselves access",
        )
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
            raise fail(f"thresholds.{name}", f"'{value}' is looser than the site default {floor}")
    at_most: dict[str, tuple[float | None, float]] = {
        "max_identical_queries": (t.max_identical_queries, defaults.max_identical_queries),
        "glm_max_parameter_ratio": (t.glm_max_parameter_ratio, defaults.glm_max_parameter_ratio),
    }
    for name, (value, ceiling) in at_most.items():
        if value is not None and value > ceiling:
            raise fail(f"thresholds.{name}", f"'{value}' is looser than the site default {ceiling}")
    if dsa.dp is not None and defaults.dp is not None:
        if dsa.dp.epsilon > defaults.dp.epsilon:
            raise fail(
                "dp.epsilon", f"'{dsa.dp.epsilon}' is looser than the site default {defaults.dp.epsilon}"
            )
        if dsa.dp.budget > defaults.dp.budget:
            raise fail("dp.budget", f"'{dsa.dp.budget}' is looser than the site default {defaults.dp.budget}")
