"""The ingest's scan of text columns kept without an identifier mark: direct identifiers a steward forgot to
mark are refused before publication, by column and signal, without quoting a value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.events import identifier_problem
from connectors import ParquetConnector
from pseudonymize.errors import IngestError, SpecError
from pseudonymize.identifiers import (
    NEARLY_UNIQUE,
    PATTERNS,
    SAMPLE_ROWS,
    UNIQUE_MIN_VALUES,
    sample_text_columns,
)
from pseudonymize.ingest import IngestResult, ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

MASTER = SecretKey(bytes(range(1, 33)))
ROWS = 400
HEAD = (
    "dataset: contacts\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 2}\ncolumns:\n"
    "  pid: {action: pseudonym, identifier: direct}\n  ward: keep\n"
)
WARDS = ["cardiology", "oncology", "surgery", "neurology"]

#: one identifier of each kind per row number: every value differs from the others
KINDS: dict[str, tuple[str, Callable[[int], str]]] = {
    "email": ("values look like e-mail addresses", lambda i: f"patient.{i}@example-clinic.org"),
    "phone_intl": ("values look like phone numbers", lambda i: f"+49 30 {4_000_000 + i}"),
    "phone_national": ("values look like phone numbers", lambda i: f"(0151) {2_000_000 + i:07d}"),
    "phone_nanp": ("values look like phone numbers", lambda i: f"(555) {100 + i % 800}-{1000 + i:04d}"),
    "iban": ("values look like IBANs", lambda i: f"DE89 3704 0044 0532 {i:04d} 00"),
    "ipv4": ("values look like IP addresses", lambda i: f"10.{i % 200}.{i // 200}.{7 + i % 9}"),
    "ipv6": ("values look like IP addresses", lambda i: f"2001:db8::{i:x}"),
}


def _source(tmp_path: Path, columns: dict[str, pa.Array | list[object]], rows: int = ROWS) -> Path:
    table = pa.table({
        "pid": [f"MRN-{i:06d}" for i in range(rows)],
        "ward": [WARDS[i % len(WARDS)] for i in range(rows)],
        **columns,
    })  # fmt: skip
    path = tmp_path / "contacts.parquet"
    pq.write_table(table, path)
    return path


def _spec(tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "contacts.spec.yaml"
    path.write_text(HEAD + rules)
    return path


def _ingest(source: Path, spec: Path, store: Store) -> IngestResult:
    return ingest(ParquetConnector(source), load_spec(spec), str(spec), MASTER, store, jurisdiction="DE")


def _refusal(tmp_path: Path, columns: dict[str, list[object]], rules: str, rows: int = ROWS) -> str:
    """The refusal's message; the store must hold nothing afterwards."""
    source = _source(tmp_path, columns, rows)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        with pytest.raises(IngestError) as err:
            _ingest(source, _spec(tmp_path, rules), store)
        assert store.catalog() == []
        tables = store.duckdb.execute("SELECT table_name FROM information_schema.tables").fetchall()
        assert not [t for (t,) in tables if t.startswith(("ds_", "staging_", "contacts"))]
    message = str(err.value)
    assert message.startswith(str(source))
    for values in columns.values():
        assert not [v for v in values if v and str(v).strip() in message], "a value was quoted"
    # The reason the CLI records in the audit log is one the log takes: no identifier-like text in it.
    assert identifier_problem(err.value.audit_reason) is None
    return message


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kept_column_whose_values_match_an_identifier_pattern_is_refused(tmp_path: Path, kind: str) -> None:
    signal, make = KINDS[kind]
    message = _refusal(tmp_path, {"contact": [make(i) for i in range(ROWS)]}, "  contact: keep\n")
    assert f"columns.contact ({signal}" in message
    assert 'identifier = "direct"' in message and 'identifier = "none"' in message
    assert "ward" not in message


def test_a_pattern_refuses_a_column_repeating_few_values(tmp_path: Path) -> None:
    # Three ward phone numbers, repeated: no uniqueness, but still numbers someone can dial.
    phones = ["+44 20 7946 0001", "+44 20 7946 0002", "+44 20 7946 0003"]
    message = _refusal(tmp_path, {"ward_phone": [phones[i % 3] for i in range(ROWS)]}, "  ward_phone: keep\n")
    assert "columns.ward_phone (values look like phone numbers)" in message


def test_a_nearly_unique_kept_column_is_refused_as_a_free_identifier(tmp_path: Path) -> None:
    # A record number of the lab, with a few repeats: a direct identifier that no pattern describes.
    numbers = [f"LAB{(i * 7919) % 100_003:06d}" for i in range(ROWS - 20)] + ["LAB000001"] * 20
    message = _refusal(tmp_path, {"lab_no": numbers}, "  lab_no: keep\n")
    assert f"columns.lab_no ({NEARLY_UNIQUE})" in message


def test_the_refusal_names_every_column_by_its_spec_name(tmp_path: Path) -> None:
    columns: dict[str, list[object]] = {
        "mail": [f"p{i}@example.org" for i in range(ROWS)],
        "full_name": [f"Given{i} Family{i * 3}" for i in range(ROWS)],
    }
    message = _refusal(tmp_path, columns, "  mail: {action: keep, as: contact}\n  full_name: keep\n")
    assert "columns.mail (values look like e-mail addresses)" in message
    assert f"columns.full_name ({NEARLY_UNIQUE})" in message


def test_a_refusal_keeps_the_previous_version_published(tmp_path: Path) -> None:
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        first = _ingest(_source(tmp_path, {"note": ["ok"] * ROWS}), _spec(tmp_path, "  note: keep\n"), store)
        before = store.duckdb.execute("SELECT * FROM ds_contacts").fetchall()
        bad = _source(tmp_path, {"note": [f"p{i}@example.org" for i in range(ROWS)]})
        with pytest.raises(IngestError, match=r"columns\.note"):
            _ingest(bad, _spec(tmp_path, "  note: keep\n"), store)
        assert store.catalog("contacts") == [first.entry]
        assert store.duckdb.execute("SELECT * FROM ds_contacts").fetchall() == before


def test_a_store_outside_duckdb_receives_nothing_after_a_refusal(tmp_path: Path) -> None:
    source = _source(tmp_path, {"note": [f"p{i}@example.org" for i in range(ROWS)]})
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        with pytest.raises(IngestError, match=r"columns\.note \(values look like e-mail addresses\)"):
            _ingest(source, _spec(tmp_path, "  note: keep\n"), store)
        assert store.catalog() == []


def test_a_column_reviewed_as_no_identifier_is_published(tmp_path: Path) -> None:
    # The steward's review overrides both signals: free-text comments, and a column of the site's
    # switchboard addresses that identify no patient.
    comments = [f"stable after {i} days of treatment" for i in range(ROWS)]
    desks = [f"desk{i % 3}@example-clinic.org" for i in range(ROWS)]
    source = _source(tmp_path, {"comment": comments, "desk": desks})
    spec = _spec(
        tmp_path, "  comment: {action: keep, identifier: none}\n  desk: {action: keep, identifier: none}\n"
    )
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = _ingest(source, spec, store).entry
        stored = store.duckdb.execute(f'SELECT comment, desk FROM "{entry.table_name}"').fetchall()
    assert stored == list(zip(comments, desks, strict=True))
    assert entry.risk_report["quasi_identifiers"] == []  # `none` is no quasi-identifier


def test_a_pseudonymized_direct_identifier_is_not_scanned(tmp_path: Path) -> None:
    source = _source(tmp_path, {"email": [f"p{i}@example.org" for i in range(ROWS)]})
    spec = _spec(tmp_path, "  email: {action: pseudonym, identifier: direct}\n")
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = _ingest(source, spec, store).entry
        (kind,) = store.duckdb.execute(f'SELECT DISTINCT typeof(email) FROM "{entry.table_name}"').fetchall()
    assert kind == ("UUID",)


def test_numeric_and_quasi_columns_are_not_scanned(tmp_path: Path) -> None:
    # A unique number per row and a kept quasi-identifier of unique text: neither is an unmarked text
    # column (the quasi-identifier is the k-anonymity report's to judge).
    source = _source(
        tmp_path,
        {"lab_value": [1000 + i for i in range(ROWS)], "room": [f"R{i:04d}" for i in range(ROWS)]},
    )
    spec = _spec(tmp_path, "  lab_value: keep\n  room: {action: keep, identifier: quasi}\n")
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = ingest(
            ParquetConnector(source),
            load_spec(spec),
            str(spec),
            MASTER,
            store,
            jurisdiction="DE",
            override_k=True,
        ).entry
    assert entry.row_count == ROWS and entry.k_override


def test_columns_below_the_thresholds_are_published(tmp_path: Path) -> None:
    # 40 % e-mail addresses (the rest ward names) is below the pattern share; 99 distinct values are too
    # few to call a column unique; blanks and NULLs are no values, so a column of rare codes between
    # them is judged on its codes.
    rows = UNIQUE_MIN_VALUES - 1
    mixed = [f"p{i}@example.org" if i % 5 < 2 else WARDS[i % 4] for i in range(rows)]
    few = [f"case {i}" for i in range(rows)]
    sparse = [None if i % 3 else ("" if i % 2 else "  ") for i in range(rows)]
    sparse[0] = "E11.9"
    source = _source(tmp_path, {"mixed": mixed, "few": few, "sparse": sparse}, rows)
    spec = _spec(tmp_path, "  mixed: keep\n  few: keep\n  sparse: keep\n")
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        assert _ingest(source, spec, store).entry.row_count == rows


def test_blank_values_do_not_hide_identifiers(tmp_path: Path) -> None:
    # Most rows blank, the rest e-mail addresses: the share is taken over the values that are there.
    emails: list[object] = [
        f"p{i}@example.org" if i % 4 == 0 else ("" if i % 2 else None) for i in range(ROWS)
    ]
    message = _refusal(tmp_path, {"email2": emails}, "  email2: keep\n")
    assert "columns.email2 (values look like e-mail addresses)" in message


def test_the_sample_is_bounded_and_repeats() -> None:
    con = duckdb.connect()
    rows = 3 * SAMPLE_ROWS
    con.execute(
        f"CREATE TABLE t AS SELECT 'v' || CAST(i % 25000 AS VARCHAR) AS a, "
        f"CASE WHEN i % 2 = 0 THEN 'x' || CAST(i AS VARCHAR) END AS b "
        f"FROM range({rows}) r(i)"
    ).fetchall()
    first = sample_text_columns(con, "t", ["a", "b"])
    assert first == sample_text_columns(con, "t", ["a", "b"])
    a, b = first
    assert a.values == SAMPLE_ROWS and 0.5 * SAMPLE_ROWS < b.values < SAMPLE_ROWS
    assert b.distinct == b.values and b.signal == NEARLY_UNIQUE
    # 25,000 values over 60,000 rows: a sample of 20,000 shows repeats, well below the unique share.
    assert a.distinct < 0.9 * a.values and a.signal is None


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("anna.meier@example.org", "e-mail addresses"),
        ("+49 (0)30 123 45 67", "phone numbers"),
        ("0049 30 12345678", "phone numbers"),
        ("030/1234567", "phone numbers"),
        ("01 23 45 67 89", "phone numbers"),
        ("555.234.5678", "phone numbers"),
        ("GB82WEST12345698765432", "IBANs (bank account numbers)"),
        ("192.168.0.1", "IP addresses"),
        ("fe80::1ff:fe23:4567:890a", "IP addresses"),
        ("::ffff:192.0.2.1", "IP addresses"),
        # Not identifiers: dates, times, codes, measurements, short or version-like numbers.
        ("2024-01-15", None),
        ("01-02-2024", None),
        ("15/01/2024", None),
        ("01.02.2024", None),
        ("10:30:00", None),
        ("E11.9", None),
        ("DUO:0000042", None),
        ("5.43", None),
        ("1234567", None),
        ("1.2.3", None),
        ("256.1.1.1", None),
        ("not an e-mail@here", None),
    ],
)
def test_patterns_recognize_identifiers_and_leave_dates_and_codes(value: str, kind: str | None) -> None:
    con = duckdb.connect()
    matched = con.execute(f"SELECT {', '.join(p.sql('$v') for p in PATTERNS)}", {"v": value}).fetchall()[0]
    assert [p.what for p, hit in zip(PATTERNS, matched, strict=True) if hit] == ([kind] if kind else [])


def test_the_spec_tells_a_reviewed_column_from_an_unmarked_one(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path, "  note: {action: keep, identifier: none}\n  sex: {action: keep, identifier: quasi}\n"
        )
    )
    assert spec.columns["note"].identifier == "none"
    assert spec.columns["ward"].identifier is None  # unmarked: scanned at ingest
    assert spec.quasi_identifiers == ["sex"]
    path = tmp_path / "bad.spec.yaml"
    path.write_text(HEAD + "  note: {action: keep, identifier: reviewed}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.field == "columns.note.identifier" and "'direct', 'quasi' or 'none'" in str(err.value)
