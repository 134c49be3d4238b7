"""The ingest's privacy checks, attacked: identifiers in quasi-identifier, mixed, sparse, binary and
copied-key columns, a spec that measures no k-anonymity, unshifted dates beside shifted ones, postcodes
stored as numbers, and a rare postcode prefix held by one patient's many rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_helpers import read_back_digest

from connectors import ParquetConnector
from pseudonymize import generalize as g
from pseudonymize.errors import IngestError
from pseudonymize.identifiers import PATIENT_KEY_COPY, PATTERNS, ColumnSample
from pseudonymize.ingest import IngestResult, ingest
from pseudonymize.keys import SecretKey
from pseudonymize.risk import NOT_MEASURED, RiskReport, k_anonymity
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

MASTER = SecretKey(bytes(range(2, 34)))
ROWS = 600
HEAD = "dataset: checks\nagreement: DSA-1\nk_anonymity: {k: 5}\n"
WARDS = ["cardiology", "oncology", "surgery", "neurology"]


def _source(tmp_path: Path, columns: Mapping[str, pa.Array | Sequence[Any]]) -> Path:
    path = tmp_path / "checks.parquet"
    pq.write_table(pa.table(dict(columns)), path)
    return path


def _ingest(
    tmp_path: Path, columns: Mapping[str, pa.Array | Sequence[Any]], spec: str, **kw: Any
) -> IngestResult:
    """Publish `columns` under `spec` (its lines after HEAD) into a fresh store at `tmp_path`."""
    source = _source(tmp_path, columns)
    spec_path = tmp_path / "checks.spec.yaml"
    spec_path.write_text(HEAD + spec)
    with Store(f"duckdb:///{tmp_path / 'store.duckdb'}") as store:
        return ingest(
            ParquetConnector(source),
            load_spec(spec_path),
            str(spec_path),
            MASTER,
            store,
            jurisdiction="DE",
            **kw,
        )


def _published(tmp_path: Path, table_name: str) -> dict[str, list[Any]]:
    with Store(f"duckdb:///{tmp_path / 'store.duckdb'}") as store:
        result = store.duckdb.execute(f'SELECT * FROM "{table_name}"')
        names = [d[0] for d in result.description]
        rows = result.fetchall()
    return {name: [r[i] for r in rows] for i, name in enumerate(names)}


def _refused(tmp_path: Path, columns: Mapping[str, pa.Array | Sequence[Any]], spec: str, **kw: Any) -> str:
    """The refusal's message; nothing may be published, and no value quoted."""
    with pytest.raises(IngestError) as err:
        _ingest(tmp_path, columns, spec, **kw)
    with Store(f"duckdb:///{tmp_path / 'store.duckdb'}") as store:
        assert store.catalog() == []
    message = str(err.value)
    for values in columns.values():
        texts = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values if v is not None
        ]
        assert not [t for t in texts if len(t) > 4 and t in message], "a value was quoted"
    return message


def _patients(rows: int = ROWS, visits: int = 3) -> list[str]:
    """Patient keys, each repeated on `visits` consecutive rows."""
    return [f"MRN-DE-{10_000_000 + (i // visits) * 7919}" for i in range(rows)]


# -- 1. quasi-identifiers are scanned for patterns -----------------------------------------------------------


def test_e_mail_addresses_marked_quasi_are_refused_without_a_patient_key(tmp_path: Path) -> None:
    # One patient's address on each of six lab rows: with no patient key, six rows made a "class of six".
    email = [f"patient{i // 6}@example.org" for i in range(ROWS)]
    message = _refused(
        tmp_path,
        {"email": email, "hba1c": [5.0 + i % 6 for i in range(ROWS)]},
        "columns:\n  email: {action: keep, identifier: quasi}\n  hba1c: keep\n",
    )
    assert "columns.email (values look like e-mail addresses)" in message


def test_a_quasi_identifier_is_not_judged_by_its_distinct_values(tmp_path: Path) -> None:
    # Unique room codes marked quasi: how rare they are is the k-anonymity report's to say (it fails).
    rooms = [f"R{i:04d}" for i in range(ROWS)]
    result = _ingest(
        tmp_path, {"room": rooms}, "columns:\n  room: {action: keep, identifier: quasi}\n", override_k=True
    )
    assert result.entry.k_override and result.risk.verdict == "below threshold"


# -- 2. scan gaps --------------------------------------------------------------------------------------------


def test_a_column_of_mixed_identifiers_is_refused(tmp_path: Path) -> None:
    # 45 % e-mail addresses, 45 % phone numbers, 10 % "unknown", repeated on each patient's three rows:
    # no one pattern holds half of it, and a third of its values differ.
    def contact(i: int) -> str:
        r, p = i % 20, i // 3
        return f"patient{p}@example.org" if r < 9 else f"+49 30 {1_000_000 + p}" if r < 18 else "unknown"

    pid = _patients()
    spec = "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n  contact: keep\n"
    message = _refused(tmp_path, {"pid": pid, "contact": [contact(i) for i in range(ROWS)]}, spec)
    assert "columns.contact (values look like e-mail addresses and phone numbers)" in message


def test_placeholders_do_not_dilute_identifiers(tmp_path: Path) -> None:
    # E-mail addresses in 40 % of the rows, "n/a" (in any case) or "none" in the others.
    fill = ["n/a", "N/A", "none"]
    email = [f"pt{i // 3}@mail.de" if i % 5 < 2 else fill[i % 3] for i in range(ROWS)]
    spec = "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n  email: keep\n"
    message = _refused(tmp_path, {"pid": _patients(), "email": email}, spec)
    assert "columns.email (values look like e-mail addresses)" in message


def test_a_binary_column_is_scanned_as_its_text(tmp_path: Path) -> None:
    # Strings a writer stored without a UTF-8 annotation: unique e-mail addresses as bytes.
    emails = pa.array([f"pt{i}@mail.de".encode() for i in range(ROWS)], pa.binary())
    spec = "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n  emailb: keep\n"
    message = _refused(tmp_path, {"pid": _patients(), "emailb": emails}, spec)
    assert "columns.emailb (values look like e-mail addresses)" in message


def test_binary_values_that_are_no_text_are_not_judged(tmp_path: Path) -> None:
    # A waveform per row: unique bytes, but no text to call a name or a record number.
    waves = pa.array([bytes([0xFF, 0xFE, i % 256, i // 256]) for i in range(ROWS)], pa.binary())
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  ward: {action: keep, identifier: quasi}\n  wave: keep\n"
    )
    ward = [WARDS[i % 4] for i in range(ROWS)]
    assert _ingest(tmp_path, {"pid": _patients(), "ward": ward, "wave": waves}, spec).entry.row_count == ROWS


@pytest.mark.parametrize("dropped", [False, True], ids=["key-pseudonymized", "key-dropped"])
def test_a_kept_copy_of_the_patient_key_is_refused(tmp_path: Path, dropped: bool) -> None:
    # Admissions, three per patient: the record number copied into a column of its own repeats as often as
    # the patient comes back, so it is neither patterned nor nearly unique. Written in lower case, it is
    # still the key (pseudonyms are taken of the upper-cased value).
    pid = _patients()
    key_rule = "{action: drop, identifier: direct}" if dropped else "{action: pseudonym, identifier: direct}"
    spec = (
        f"patient_key: pid\ncolumns:\n  pid: {key_rule}\n  mrn: keep\n"
        "  sex: {action: keep, identifier: quasi}\n"
    )
    columns = {"pid": pid, "mrn": [p.lower() for p in pid], "sex": ["FM"[i % 2] for i in range(ROWS)]}
    message = _refused(tmp_path, columns, spec)
    assert f"columns.mrn ({PATIENT_KEY_COPY})" in message


def test_a_copy_of_the_key_is_refused_whatever_its_mark(tmp_path: Path) -> None:
    # An integer key and its integer copy, reviewed as "none" by mistake: a copy of the key is the key.
    pid = pa.array([40_000_000 + i // 2 for i in range(ROWS)], pa.int64())
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  case_no: {action: keep, identifier: none}\n  sex: {action: keep, identifier: quasi}\n"
    )
    columns = {"pid": pid, "case_no": pid, "sex": ["FM"[(i // 2) % 2] for i in range(ROWS)]}
    assert f"columns.case_no ({PATIENT_KEY_COPY})" in _refused(tmp_path, columns, spec)


def test_ordinary_codes_text_and_chance_equalities_are_published(tmp_path: Path) -> None:
    # ICD-10 codes, free text with "n/a" and "none" between the notes, and a visit number that equals the
    # patient's (small integer) key now and then: no identifier among them.
    codes = ["E11.9", "I10", "J45.909", "C50.911", "N18.3", "Z00.00"]
    notes = ["n/a", "none", "stable", "N/A", "seen by the ward team", "review in 3 months", "none"]
    pid = [i // 3 + 1 for i in range(ROWS)]
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  sex: {action: keep, identifier: quasi}\n  icd10: keep\n  note: keep\n  visit: keep\n"
    )
    columns = {
        "pid": pa.array(pid, pa.int32()),
        "sex": ["FM"[(i // 3) % 2] for i in range(ROWS)],
        "icd10": [codes[i % len(codes)] for i in range(ROWS)],
        "note": [notes[i % len(notes)] for i in range(ROWS)],
        "visit": pa.array([i % 3 + 1 for i in range(ROWS)], pa.int32()),
    }
    assert _ingest(tmp_path, columns, spec).entry.row_count == ROWS


@pytest.mark.parametrize(
    ("matches", "placeholders", "refused"),
    [
        ({"e-mail addresses": 45, "phone numbers": 45}, 10, True),
        ({"e-mail addresses": 40}, 60, True),
        ({"e-mail addresses": 40}, 0, False),  # the rest ward names: below half of the values
        ({}, 100, False),  # placeholders alone
    ],
)
def test_the_pattern_share_counts_every_pattern_over_the_values_that_are_there(
    matches: dict[str, int], placeholders: int, refused: bool
) -> None:
    # 100 values sampled, 10 distinct: judged by the patterns alone.
    counted = tuple((p, matches.get(p.what, 0)) for p in PATTERNS)
    sample = ColumnSample("c", 100, 10, counted, placeholders=placeholders)
    assert (sample.signal is not None) is refused


# -- 3. k-anonymity that was not measured, and unshifted dates -----------------------------------------------


def test_a_report_without_quasi_identifiers_is_not_measured() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 'P' || i AS pid FROM range(3000) r(i)").fetchall()
    report = k_anonymity(con, "t", [], 5)
    assert report.verdict == NOT_MEASURED and not report.passes and not report.measured
    assert (report.classes, report.smallest_class, report.records_below_k) == (0, 0, 3000)
    assert report.to_dict()["verdict"] == NOT_MEASURED and report.to_dict()["passes"] is False
    # A report stored before the verdict was recorded reads back with it.
    old = {k: v for k, v in report.to_dict().items() if k != "verdict"} | {"passes": True}
    assert RiskReport.from_dict(old) == report


def test_no_quasi_identifiers_refuses_the_ingest_without_the_override(tmp_path: Path) -> None:
    # Birth dates (reviewed, but a quasi-identifier all the same), sex and full postcodes, nothing marked
    # quasi: every row unique, and a report of one class of every row would have said "passes".
    born = [date(1940, 1, 1) + timedelta(days=17 * i) for i in range(ROWS)]
    columns = {
        "pid": _patients(ROWS, 1),
        "born": born,
        "sex": ["FM"[i % 2] for i in range(ROWS)],
        "postcode": [f"{10_000 + i % 40 * 13}" for i in range(ROWS)],
    }
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  born: {action: keep, identifier: none}\n  sex: keep\n  postcode: keep\n"
    )
    message = _refused(tmp_path, columns, spec)
    assert "k-anonymity was not measured" in message and "--override-k" in message
    result = _ingest(tmp_path, columns, spec, override_k=True)
    assert result.entry.k_override and result.entry.risk_report["verdict"] == NOT_MEASURED
    with Store(f"duckdb:///{tmp_path / 'store.duckdb'}") as store:
        assert result.entry.content_digest == read_back_digest(store, result.entry.table_name)


def _admissions(rows: int = ROWS) -> dict[str, Any]:
    admitted = [date(2023, 1, 1) + timedelta(days=i % 300) for i in range(rows)]
    return {
        "pid": _patients(rows, 1),
        "sex": ["FM"[i % 2] for i in range(rows)],
        "admitted": admitted,
        "discharged": [d + timedelta(days=2 + i % 5) for i, d in enumerate(admitted)],
    }


def test_a_date_kept_beside_shifted_dates_is_refused(tmp_path: Path) -> None:
    # The admission kept, the discharge shifted: their difference is the patient's shift, give or take
    # the stay. Marked quasi it gives the shift back all the same.
    for mark in ("keep", "{action: keep, identifier: quasi}"):
        spec = (
            "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
            f"  sex: {{action: keep, identifier: quasi}}\n  admitted: {mark}\n  discharged: date_shift\n"
        )
        message = _refused(tmp_path, _admissions(), spec)
        assert "dates columns.admitted:" in message and "(columns.discharged)" in message
        assert 'identifier = "none"' in message


def test_a_date_marked_as_no_patients_is_published_beside_shifted_ones(tmp_path: Path) -> None:
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  sex: {action: keep, identifier: quasi}\n  admitted: {action: keep, identifier: none}\n"
        "  discharged: date_shift\n"
    )
    assert _ingest(tmp_path, _admissions(), spec).entry.row_count == ROWS


def test_an_unmarked_date_is_refused_and_a_quasi_one_measured_when_nothing_is_shifted(tmp_path: Path) -> None:
    columns = {k: v for k, v in _admissions().items() if k != "discharged"}
    spec = "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n  sex: keep\n"
    message = _refused(tmp_path, columns, spec + "  admitted: keep\n")
    assert "dates columns.admitted:" in message and 'identifier = "quasi"' in message
    result = _ingest(
        tmp_path, columns, spec + "  admitted: {action: keep, identifier: quasi}\n", override_k=True
    )
    assert result.risk.quasi_identifiers == ["admitted"] and result.risk.verdict == "below threshold"


# -- 4. postcodes stored as numbers --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [pa.int32(), pa.int64(), pa.float64()], ids=str)
def test_a_postcode_column_of_numbers_is_refused(tmp_path: Path, kind: pa.DataType) -> None:
    # 01067 (Dresden) as the number 1067 would be published as area "10", Berlin's.
    postcodes = pa.array([1067] * (ROWS // 2) + [10115] * (ROWS // 2), kind)
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  postcode: {action: generalize, method: postcode, keep: 2, min_count: 20, as: area,"
        " identifier: quasi}\n"
    )
    message = _refused(tmp_path, {"pid": _patients(ROWS, 1), "postcode": postcodes}, spec)
    assert "column 'postcode' holds postcodes that are not text" in message


def test_a_postcode_column_of_text_keeps_its_zeros(tmp_path: Path) -> None:
    postcodes = pa.array(["01067"] * (ROWS // 2) + ["10115"] * (ROWS // 2)).dictionary_encode()
    spec = (
        "patient_key: pid\ncolumns:\n  pid: {action: pseudonym, identifier: direct}\n"
        "  postcode: {action: generalize, method: postcode, keep: 2, min_count: 20, as: area,"
        " identifier: quasi}\n"
    )
    result = _ingest(tmp_path, {"pid": _patients(ROWS, 1), "postcode": postcodes}, spec)
    assert Counter(_published(tmp_path, result.entry.table_name)["area"]) == {
        "01": ROWS // 2,
        "10": ROWS // 2,
    }


# -- 5. rare postcode prefixes count patients ----------------------------------------------------------------


def test_a_rare_prefix_is_rare_by_its_patients_not_its_rows(tmp_path: Path) -> None:
    # One patient's 300 lab results in area 9, a thousand patients in area 1: min_count 200 patients.
    pids = ["LONE"] * 300 + [f"P{i}" for i in range(1000)]
    postcodes = ["99999"] * 300 + ["10115"] * 1000
    for key in ("pseudonym", "drop"):
        spec = (
            f"patient_key: pid\ncolumns:\n  pid: {{action: {key}, identifier: direct}}\n"
            "  postcode: {action: generalize, method: postcode, keep: 1, min_count: 200, as: area, "
            "identifier: quasi}\n"
        )
        (tmp_path / key).mkdir()
        result = _ingest(tmp_path / key, {"pid": pids, "postcode": postcodes}, spec, override_k=True)
        assert Counter(_published(tmp_path / key, result.entry.table_name)["area"]) == {"1": 1000, "*": 300}


def test_suppression_without_patients_counts_rows() -> None:
    con = duckdb.connect()
    # Prefix 9: three rows of one patient; prefix 1: nine rows of three patients.
    con.execute(
        "CREATE TABLE t AS SELECT CASE WHEN i < 3 THEN '9' ELSE '1' END AS pc, i // 3 AS p "
        "FROM range(12) r(i)"
    ).fetchall()
    con.execute("CREATE TABLE u AS SELECT * FROM t").fetchall()
    con.execute(g.suppress_rare_prefixes_sql("t", "pc", 3)).fetchall()
    con.execute(g.suppress_rare_prefixes_sql("u", "pc", 3, patient_column="p")).fetchall()
    assert Counter(r[0] for r in con.execute("SELECT pc FROM t").fetchall()) == {"9": 3, "1": 9}
    assert Counter(r[0] for r in con.execute("SELECT pc FROM u").fetchall()) == {"*": 3, "1": 9}
