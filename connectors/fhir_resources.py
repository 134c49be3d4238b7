"""FHIR R4 resources flattened to table rows: one schema and one flattening function per resource type.

Flattening keeps what research queries use and names columns in snake_case. Where a resource may hold
several entries (names, addresses, codings) one is chosen by a stated preference, never merged.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

_UTC = dt.UTC
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
# A literal reference to a Patient: relative (`Patient/<id>`) or absolute (`https://host/fhir/Patient/<id>`),
# perhaps of one version (`/_history/<version>`); `urn:uuid:<uuid>` is read by its own rule.
_PATIENT_REFERENCE = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.\-]*://[^/\s]+(?:/[^\s]*)?/)?Patient/(?P<id>[^/\s]+)(?:/_history/[^/\s]+)?"
)
_URN_UUID = re.compile(r"urn:uuid:(?P<id>[^/\s]+)")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?")

ICD10_SYSTEMS = (
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://fhir.de/CodeSystem/bfarm/icd-10-gm",
    "http://fhir.de/CodeSystem/dimdi/icd-10-gm",
)
SNOMED_SYSTEM = "http://snomed.info/sct"
LOINC_SYSTEM = "http://loinc.org"

#: The resource types of FHIR R4 (4.0.1): the only `resourceType` values an error may repeat, since
#: anything else a line holds there may be a patient's data.
_R4_NAMES = """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
    AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan
    CareTeam CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression
    CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap Condition
    Consent Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue
    Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport
    DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest
    EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceVariable ExampleScenario
    ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse
    HealthcareService ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation
    ImplementationGuide InsurancePlan Invoice Library Linkage List Location Measure MeasureReport Media
    Medication MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication
    MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction
    MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical
    MedicinalProductUndesirableEffect MessageDefinition MessageHeader MolecularSequence NamingSystem
    NutritionOrder Observation ObservationDefinition OperationDefinition OperationOutcome Organization
    OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition
    Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson
    RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
    SpecimenDefinition StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid
    SubstancePolymer SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial
    SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport
    TestScript ValueSet VerificationResult VisionPrescription
"""
FHIR_R4_RESOURCE_TYPES: frozenset[str] = frozenset(_R4_NAMES.split())


class FieldError(Exception):
    """A field holds a value of the wrong JSON type or format; says which column and what was expected."""

    def __init__(self, column: str, expected: str) -> None:
        super().__init__(f"{column}: expected {expected}")
        self.column = column
        self.expected = expected


@dataclass(frozen=True)
class ResourceTable:
    """How one resource type becomes a row."""

    schema: pa.Schema
    flatten: Callable[[Mapping[str, Any]], dict[str, Any]]


def _text(value: Any, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise FieldError(column, "a string")


def _object(value: Any, column: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise FieldError(column, "a JSON object")


def _objects(value: Any, column: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise FieldError(column, "a JSON array of objects")


def _date(value: Any, column: str) -> dt.date | None:
    """A FHIR date; a partial date (YYYY or YYYY-MM) stands for its first day."""
    text = _text(value, column)
    if text is None:
        return None
    match = _DATE.fullmatch(text)
    try:
        if match is None:
            raise ValueError(column)
        return dt.date(int(match[1]), int(match[2] or 1), int(match[3] or 1))
    except ValueError:
        raise FieldError(column, "a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)") from None


def _date_time(value: Any, column: str) -> dt.datetime | None:
    """A FHIR dateTime in UTC; a date alone stands for its first instant, a missing zone for UTC."""
    text = _text(value, column)
    if text is None:
        return None
    if _DATE.fullmatch(text):
        day = _date(text, column)
        assert day is not None
        return dt.datetime(day.year, day.month, day.day, tzinfo=_UTC)
    try:
        if not _DATE_TIME.fullmatch(text):
            raise ValueError(column)
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(column, "a FHIR dateTime (YYYY-MM-DDThh:mm:ss+zz:zz)") from None
    return moment.replace(tzinfo=_UTC) if moment.tzinfo is None else moment.astimezone(_UTC)


def _number(value: Any, column: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise FieldError(column, "a JSON number")


def _boolean(value: Any, column: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise FieldError(column, "true or false")


def _patient_id(value: Any, column: str) -> str | None:
    """The id of the Patient a reference points at: `Patient/1`, `https://x/fhir/Patient/1/_history/2` or
    `urn:uuid:…`. A reference to anything else (`Group/7`, a contained `#p1`, an empty `Patient/`) is no
    patient's id and is refused, never read as one."""
    reference = _text(_object(value, column).get("reference"), column)
    if reference is None:
        return None
    match = _URN_UUID.fullmatch(reference) or _PATIENT_REFERENCE.fullmatch(reference)
    if match is None:
        raise FieldError(column, "a reference to a Patient: Patient/<id>, its absolute URL or urn:uuid:<id>")
    return match["id"]


def _coding(value: Any, column: str, preferred: tuple[str, ...]) -> tuple[str | None, str | None, str | None]:
    """(system, code, display) of the coding in the most preferred system present, else of the first one."""
    codings = _objects(_object(value, column).get("coding"), column)
    if not codings:
        return None, None, None
    ranked = [c for system in preferred for c in codings if c.get("system") == system]
    chosen = ranked[0] if ranked else codings[0]
    return (
        _text(chosen.get("system"), column),
        _text(chosen.get("code"), column),
        _text(chosen.get("display"), column),
    )


def _pick(entries: list[Mapping[str, Any]], use: str) -> Mapping[str, Any]:
    """The entry whose `use` is the preferred one, else the first; an empty mapping when there is none."""
    return next((e for e in entries if e.get("use") == use), entries[0] if entries else {})


def _patient(resource: Mapping[str, Any]) -> dict[str, Any]:
    name = _pick(_objects(resource.get("name"), "family_name"), "official")
    address = _pick(_objects(resource.get("address"), "postal_code"), "home")
    given = name.get("given")
    if given is not None and not (isinstance(given, list) and all(isinstance(g, str) for g in given)):
        raise FieldError("given_names", "a JSON array of strings")
    deceased_at = _date_time(resource.get("deceasedDateTime"), "deceased_date_time")
    deceased = _boolean(resource.get("deceasedBoolean"), "deceased")
    return {
        "birth_date": _date(resource.get("birthDate"), "birth_date"),
        "gender": _text(resource.get("gender"), "gender"),
        "deceased": True if deceased_at is not None else deceased,
        "deceased_date_time": deceased_at,
        "postal_code": _text(address.get("postalCode"), "postal_code"),
        "country": _text(address.get("country"), "country"),
        "family_name": _text(name.get("family"), "family_name"),
        "given_names": " ".join(given) if given else None,
    }


def _condition(resource: Mapping[str, Any]) -> dict[str, Any]:
    system, code, display = _coding(resource.get("code"), "code", (*ICD10_SYSTEMS, SNOMED_SYSTEM))
    onset = resource.get("onsetDateTime")
    if onset is None:
        onset = _object(resource.get("onsetPeriod"), "onset_date_time").get("start")
    return {
        "patient_id": _patient_id(resource.get("subject"), "patient_id"),
        "code_system": system,
        "code": code,
        "code_display": display,
        "onset_date_time": _date_time(onset, "onset_date_time"),
        "recorded_date": _date_time(resource.get("recordedDate"), "recorded_date"),
        "clinical_status": _coding(resource.get("clinicalStatus"), "clinical_status", ())[1],
    }


def _observation(resource: Mapping[str, Any]) -> dict[str, Any]:
    system, code, display = _coding(resource.get("code"), "code", (LOINC_SYSTEM,))
    effective = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    if effective is None:
        effective = _object(resource.get("effectivePeriod"), "effective_date_time").get("start")
    quantity = _object(resource.get("valueQuantity"), "value")
    unit = quantity.get("unit") if quantity.get("unit") is not None else quantity.get("code")
    return {
        "patient_id": _patient_id(resource.get("subject"), "patient_id"),
        "code_system": system,
        "code": code,
        "code_display": display,
        "effective_date_time": _date_time(effective, "effective_date_time"),
        "value": _number(quantity.get("value"), "value"),
        "unit": _text(unit, "unit"),
        "value_code": _coding(resource.get("valueCodeableConcept"), "value_code", ())[1],
        "status": _text(resource.get("status"), "status"),
    }


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field("id", pa.string(), nullable=False), *(pa.field(n, t) for n, t in fields)])


RESOURCES: Mapping[str, ResourceTable] = {
    "Patient": ResourceTable(
        _schema(
            ("birth_date", pa.date32()),
            ("gender", pa.string()),
            ("deceased", pa.bool_()),
            ("deceased_date_time", _TIMESTAMP),
            ("postal_code", pa.string()),
            ("country", pa.string()),
            ("family_name", pa.string()),
            ("given_names", pa.string()),
        ),
        _patient,
    ),
    "Condition": ResourceTable(
        _schema(
            ("patient_id", pa.string()),
            ("code_system", pa.string()),
            ("code", pa.string()),
            ("code_display", pa.string()),
            ("onset_date_time", _TIMESTAMP),
            ("recorded_date", _TIMESTAMP),
            ("clinical_status", pa.string()),
        ),
        _condition,
    ),
    "Observation": ResourceTable(
        _schema(
            ("patient_id", pa.string()),
            ("code_system", pa.string()),
            ("code", pa.string()),
            ("code_display", pa.string()),
            ("effective_date_time", _TIMESTAMP),
            ("value", pa.float64()),
            ("unit", pa.string()),
            ("value_code", pa.string()),
            ("status", pa.string()),
        ),
        _observation,
    ),
}
