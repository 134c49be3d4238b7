"""FhirNdjsonConnector: Patient, Condition and Observation flattened to rows, and line-level errors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors import (
    Connector,
    EmptySource,
    EncodingError,
    FhirNdjsonConnector,
    InvalidOption,
    MalformedRecord,
    SourceNotFound,
    TypeParseError,
    WrongResourceType,
)

Drain = Callable[[Connector, int], pa.Table]
NamedCheck = Callable[..., None]
SECRET = "MRN-SECRET-4711"
UTC = dt.UTC


def patient(index: int, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"pat-{index}",
        "identifier": [{"system": "urn:mrn", "value": f"MRN{index}"}],
        "name": [
            {"use": "nickname", "given": ["Hansi"]},
            {"use": "official", "family": "Müller", "given": ["Hans", "Peter"]},
        ],
        "gender": "male",
        "birthDate": "1950-04-17",
        "address": [
            {"use": "work", "postalCode": "99999"},
            {"use": "home", "postalCode": "8001", "country": "CH"},
        ],
        **extra,
    }


CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "cond-1",
    "subject": {"reference": "Patient/pat-1"},
    "code": {
        "coding": [
            {"system": "http://example.org/local", "code": "X1"},
            {"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"},
            {"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "display": "Type 2 diabetes"},
        ]
    },
    "clinicalStatus": {"coding": [{"code": "active"}]},
    "onsetDateTime": "2019-03-04T10:00:00+01:00",
    "recordedDate": "2019-03-05",
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "subject": {"reference": "https://fhir.example.org/Patient/pat-1/_history/3"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]},
    "effectiveDateTime": "2020-06-01T08:15:00Z",
    "valueQuantity": {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
}


def write(path: Path, *lines: dict[str, Any] | bytes) -> Path:
    path.write_bytes(
        b"".join(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n" for line in lines)
    )
    return path


def test_patient_flattened(tmp_path: Path, drain: Drain) -> None:
    path = write(
        tmp_path / "Patient.ndjson",
        patient(1),
        b"\n",
        {"resourceType": "Patient", "id": "pat-2", "birthDate": "1961", "deceasedDateTime": "2021-02-03"},
        {"resourceType": "Patient", "id": "pat-3", "deceasedBoolean": False},
    )
    table = drain(FhirNdjsonConnector(path, "Patient"), 2)
    assert table.to_pylist() == [
        {
            "id": "pat-1",
            "birth_date": dt.date(1950, 4, 17),
            "gender": "male",
            "deceased": None,
            "deceased_date_time": None,
            "postal_code": "8001",
            "country": "CH",
            "family_name": "Müller",
            "given_names": "Hans Peter",
        },
        {
            "id": "pat-2",
            "birth_date": dt.date(1961, 1, 1),
            "gender": None,
            "deceased": True,
            "deceased_date_time": dt.datetime(2021, 2, 3, tzinfo=UTC),
            "postal_code": None,
            "country": None,
            "family_name": None,
            "given_names": None,
        },
        {
            "id": "pat-3",
            "birth_date": None,
            "gender": None,
            "deceased": False,
            "deceased_date_time": None,
            "postal_code": None,
            "country": None,
            "family_name": None,
            "given_names": None,
        },
    ]


def test_condition_prefers_icd10_then_snomed(tmp_path: Path, drain: Drain) -> None:
    snomed_only = {**CONDITION, "id": "cond-2", "code": {"coding": CONDITION["code"]["coding"][:2]}}
    path = write(tmp_path / "Condition.ndjson", CONDITION, snomed_only)
    rows = drain(FhirNdjsonConnector(path, "Condition"), 10).to_pylist()
    assert rows[0] == {
        "id": "cond-1",
        "patient_id": "pat-1",
        "code_system": "http://hl7.org/fhir/sid/icd-10",
        "code": "E11.9",
        "code_display": "Type 2 diabetes",
        "onset_date_time": dt.datetime(2019, 3, 4, 9, 0, tzinfo=UTC),
        "recorded_date": dt.datetime(2019, 3, 5, tzinfo=UTC),
        "clinical_status": "active",
    }
    assert (rows[1]["code_system"], rows[1]["code"]) == ("http://snomed.info/sct", "44054006")


def test_observation_flattened(tmp_path: Path, drain: Drain) -> None:
    coded = {
        "resourceType": "Observation",
        "id": "obs-2",
        "status": "final",
        "subject": {"reference": "urn:uuid:5b6c"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "8517006"}]},
    }
    path = write(tmp_path / "obs.ndjson", OBSERVATION, coded)
    rows = drain(FhirNdjsonConnector(path, "Observation"), 10).to_pylist()
    assert rows[0] == {
        "id": "obs-1",
        "patient_id": "pat-1",
        "code_system": "http://loinc.org",
        "code": "4548-4",
        "code_display": "Hemoglobin A1c",
        "effective_date_time": dt.datetime(2020, 6, 1, 8, 15, tzinfo=UTC),
        "value": 7.2,
        "unit": "%",
        "value_code": None,
        "status": "final",
    }
    assert (rows[1]["patient_id"], rows[1]["value"], rows[1]["value_code"]) == ("5b6c", None, "8517006")


def test_bulk_export_folder_reads_the_type_files_in_order(tmp_path: Path, drain: Drain) -> None:
    write(tmp_path / "Patient.000.ndjson", patient(1), patient(2))
    write(tmp_path / "Patient.001.ndjson", patient(3))
    write(tmp_path / "Condition.ndjson", CONDITION)
    write(tmp_path / "PatientConsent.ndjson", b"not read\n")
    connector = FhirNdjsonConnector(tmp_path, "Patient")
    assert [p.name for p in connector.files()] == ["Patient.000.ndjson", "Patient.001.ndjson"]
    assert drain(connector, 2).column("id").to_pylist() == ["pat-1", "pat-2", "pat-3"]
    assert drain(FhirNdjsonConnector(tmp_path, "Condition"), 2).num_rows == 1


def test_streams_bounded_batches(tmp_path: Path) -> None:
    path = write(tmp_path / "Patient.ndjson", *(patient(i) for i in range(2_500)))
    sizes = [batch.num_rows for batch in FhirNdjsonConnector(path, "Patient").batches(1_000)]
    assert sizes == [1_000, 1_000, 500]


def test_bad_json_line(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(
        tmp_path / "Patient.ndjson",
        patient(1),
        b'{"resourceType": "Patient", "id": "' + SECRET.encode() + b"\n",
    )
    with pytest.raises(MalformedRecord) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2, secret=SECRET)
    assert "not valid JSON" in str(caught.value)


def test_line_that_is_not_an_object(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path / "Patient.ndjson", b"[1, 2]\n")
    with pytest.raises(MalformedRecord) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=1)


def test_wrong_resource_type(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path / "Patient.ndjson", patient(1), patient(2), OBSERVATION)
    with pytest.raises(WrongResourceType) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=3, column="resourceType")
    assert "'Observation'" in str(caught.value)


def test_wrong_resource_type_that_is_not_a_type_name_is_not_repeated(
    tmp_path: Path, assert_named: NamedCheck
) -> None:
    path = write(tmp_path / "Patient.ndjson", {"resourceType": SECRET, "id": "x"})
    with pytest.raises(WrongResourceType) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=1, secret=SECRET)


def test_non_utf8_line(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path / "Patient.ndjson", patient(1), b'{"resourceType": "Patient", "id": "M\xfcller"}\n')
    with pytest.raises(EncodingError) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2)


@pytest.mark.parametrize(
    ("field", "value", "column"),
    [
        ("birthDate", "17.04.1950", "birth_date"),
        ("birthDate", "1950-02-30", "birth_date"),
        ("gender", 1, "gender"),
        ("deceasedDateTime", "2020-01-01 10:00", "deceased_date_time"),
        ("name", {"family": "x"}, "family_name"),
    ],
)
def test_field_of_the_wrong_type(
    tmp_path: Path, field: str, value: Any, column: str, assert_named: NamedCheck
) -> None:
    path = write(tmp_path / "Patient.ndjson", patient(1), patient(2, **{field: value}))
    with pytest.raises(TypeParseError) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2, column=column)


def test_observation_value_that_is_not_a_number(tmp_path: Path, assert_named: NamedCheck) -> None:
    broken = {**OBSERVATION, "valueQuantity": {"value": SECRET}}
    path = write(tmp_path / "Observation.ndjson", broken)
    with pytest.raises(TypeParseError) as caught:
        list(FhirNdjsonConnector(path, "Observation").batches())
    assert_named(caught.value, source=str(path), line=1, column="value", secret=SECRET)


def test_resource_without_id(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = write(tmp_path / "Patient.ndjson", {"resourceType": "Patient", "gender": "female"})
    with pytest.raises(MalformedRecord) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=1, column="id")


@pytest.mark.parametrize("data", [b"", b"\n \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file(tmp_path: Path, data: bytes, assert_named: NamedCheck) -> None:
    path = write(tmp_path / "Patient.ndjson", data)
    with pytest.raises(EmptySource) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path))


def test_missing_file(tmp_path: Path, assert_named: NamedCheck) -> None:
    path = tmp_path / "Patient.ndjson"
    with pytest.raises(SourceNotFound) as caught:
        FhirNdjsonConnector(path, "Patient").schema()
    assert_named(caught.value, source=str(path))


def test_folder_without_files_of_the_type(tmp_path: Path, assert_named: NamedCheck) -> None:
    write(tmp_path / "Condition.ndjson", CONDITION)
    with pytest.raises(SourceNotFound) as caught:
        list(FhirNdjsonConnector(tmp_path, "Observation").batches())
    assert_named(caught.value, source=str(tmp_path))


def test_unsupported_resource_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption):
        FhirNdjsonConnector(tmp_path, "MedicationRequest")


@pytest.mark.parametrize(
    ("line", "error", "why"),
    [
        # A time at the edge of the calendar, whose offset takes it past year 9999.
        (b'{"resourceType": "Patient", "id": "p", "deceasedDateTime": "9999-12-31T23:30:00-01:00"}\n',
         MalformedRecord, "cannot be read"),
        (b'{"resourceType": "Patient", "id": "p", "extension": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
         MalformedRecord, "nests too deeply"),
        (b'{"resourceType": "Patient", "id": "p", "name": [{"family": "Smith\\ud800son"}]}\n',
         EncodingError, "lone surrogate"),
        (b'{"resourceType": "Patient", "id": "p\\udfff"}\n', EncodingError, "lone surrogate"),
    ],
)  # fmt: skip
def test_values_no_column_can_hold_name_their_line(
    tmp_path: Path, line: bytes, error: type[Exception], why: str
) -> None:
    path = write(tmp_path / "Patient.ndjson", patient(1), line)
    with pytest.raises(error) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert getattr(caught.value, "line", None) == 2 and why in str(caught.value)


@pytest.mark.parametrize("found", ["Schneider", "Mueller", "patient", 4711])
def test_a_resource_type_no_fhir_type_has_is_not_repeated(
    tmp_path: Path, found: object, assert_named: NamedCheck
) -> None:
    # A capitalised word there may be a family name: only FHIR R4's own type names are quoted.
    path = write(tmp_path / "Patient.ndjson", patient(1), {"resourceType": found, "id": SECRET})
    with pytest.raises(WrongResourceType) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2, column="resourceType", secret=f"{found}'")
    assert "an unexpected resourceType" in str(caught.value)


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/",
        "Patient",
        "Group/77",
        "#contained1",
        "urn:uuid:",
        "https://x.org/fhir/Group/7",
        "Patient/1/x",
    ],
)
def test_a_reference_to_no_patient_is_refused(
    tmp_path: Path, reference: str, assert_named: NamedCheck
) -> None:
    path = write(tmp_path / "Condition.ndjson", CONDITION, {**CONDITION, "subject": {"reference": reference}})
    with pytest.raises(TypeParseError) as caught:
        list(FhirNdjsonConnector(path, "Condition").batches())
    assert_named(caught.value, source=str(path), line=2, column="patient_id")
    assert "Patient/<id>" in str(caught.value)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/p-1", "p-1"),
        ("Patient/p-1/_history/2", "p-1"),
        ("https://fhir.example.org/r4/Patient/p-1", "p-1"),
        ("urn:uuid:0b1c2d3e-0000-4000-8000-000000000001", "0b1c2d3e-0000-4000-8000-000000000001"),
    ],
)
def test_references_to_a_patient(tmp_path: Path, reference: str, expected: str, drain: Drain) -> None:
    path = write(tmp_path / "Condition.ndjson", {**CONDITION, "subject": {"reference": reference}})
    assert drain(FhirNdjsonConnector(path, "Condition"), 10).column("patient_id").to_pylist() == [expected]


def test_nul_character_in_a_value(tmp_path: Path, assert_named: NamedCheck) -> None:
    broken = patient(2, gender="ma\u0000le")
    path = write(tmp_path / "Patient.ndjson", patient(1), broken)
    with pytest.raises(EncodingError) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2, column="gender")
    assert "NUL" in str(caught.value)


def test_an_integer_of_too_many_digits(tmp_path: Path, assert_named: NamedCheck) -> None:
    line = b'{"resourceType": "Patient", "id": "p", "extension": ' + b"7" * 5000 + b"}\n"
    path = write(tmp_path / "Patient.ndjson", patient(1), line)
    with pytest.raises(MalformedRecord) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2)
    assert "too many digits" in str(caught.value)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (b'{"resourceType": "Patient", "id": "p", "name": [{"family": "x"}\n', "at the end of the line"),
        (b'{"resourceType": "Patient", "id": "p",, "gender": "male"}\n', "at character 39"),
    ],
)
def test_invalid_json_names_where_on_its_line(
    tmp_path: Path, line: bytes, where: str, assert_named: NamedCheck
) -> None:
    path = write(tmp_path / "Patient.ndjson", patient(1), line)
    with pytest.raises(MalformedRecord) as caught:
        list(FhirNdjsonConnector(path, "Patient").batches())
    assert_named(caught.value, source=str(path), line=2)
    assert where in str(caught.value)
