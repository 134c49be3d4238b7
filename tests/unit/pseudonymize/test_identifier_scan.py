"""The ingest's scan of text and integer columns kept without an identifier mark: direct identifiers a
steward forgot to mark are refused before publication, by column and signal, without quoting a value."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.events import identifier_problem
from connectors import ParquetConnector
from gateway.synth import generate_site
from pseudonymize.errors import IngestError, SpecError
from pseudonymize.identifiers import (
    INTEGER_SHARE_MIN_VALUES,
    NEARLY_UNIQUE,
    PATTERNS,
    SAMPLE_ROWS,
    UNIQUE_MIN_VALUES,
    ColumnSample,
    is_integer_type,
    sample_kept_columns,
)
from pseudonymize.ingest import IngestResult, ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

MASTER = SecretKey(bytes(range(1, 33)))
ROWS = 400
HEAD = (
    "dataset: contacts\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 2}\ncolumns:\n"
    "  pid: {action: pseudonym, identifier: direct}\n  ward: {action: keep, identifier: quasi}\n"
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


def _source(tmp_path: Path, columns: Mapping[str, pa.Array | Sequence[object]], rows: int = ROWS) -> Path:
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


def _refusal(
    tmp_path: Path, columns: Mapping[str, pa.Array | Sequence[object]], rules: str, rows: int = ROWS
) -> str:
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
        quoted = [v for v in values if v is not None and str(v).strip() and str(v).strip() in message]
        assert not quoted, "a value was quoted"
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
    assert entry.risk_report["quasi_identifiers"] == ["ward"]  # `none` is no quasi-identifier


def test_a_pseudonymized_direct_identifier_is_not_scanned(tmp_path: Path) -> None:
    source = _source(tmp_path, {"email": [f"p{i}@example.org" for i in range(ROWS)]})
    spec = _spec(tmp_path, "  email: {action: pseudonym, identifier: direct}\n")
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = _ingest(source, spec, store).entry
        (kind,) = store.duckdb.execute(f'SELECT DISTINCT typeof(email) FROM "{entry.table_name}"').fetchall()
    assert kind == ("UUID",)


def test_measurement_and_quasi_columns_are_not_scanned(tmp_path: Path) -> None:
    # A unique floating-point measurement per row and a kept quasi-identifier of unique text: neither is an
    # unmarked text or integer column (the quasi-identifier is the k-anonymity report's to judge).
    source = _source(
        tmp_path,
        {
            "lab_value": [1000.5 + i for i in range(ROWS)],
            "weight": pa.array([Decimal(i) / 100 + 50 for i in range(ROWS)], pa.decimal128(6, 2)),
            "room": [f"R{i:04d}" for i in range(ROWS)],
        },
    )
    spec = _spec(tmp_path, "  lab_value: keep\n  weight: keep\n  room: {action: keep, identifier: quasi}\n")
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


#: whitespace at either end of a value: DuckDB's trim() strips spaces (Unicode's too, in 2.0) but not the
#: tab, the line break or the byte-order mark
EDGES = {
    "tab": "\t",
    "line feed": "\n",
    "carriage return": "\r\n",
    "no-break space": "\u00a0",
    "em space": "\u2003",
    "byte-order mark": "\ufeff",
}


@pytest.mark.parametrize("edge", list(EDGES))
def test_whitespace_around_a_value_does_not_hide_a_pattern(tmp_path: Path, edge: str) -> None:
    # Three ward phone numbers (too few values to be unique), each with a tab, a line break or a Unicode
    # space before or after it: the phone numbers a CSV export with stray whitespace would hold.
    space = EDGES[edge]
    phones = [
        f"{space}+49 30 {4_000_000 + i % 3}" if i % 2 else f"+49 30 {4_000_000 + i % 3}{space}"
        for i in range(ROWS)
    ]
    message = _refusal(tmp_path, {"ward_phone": phones}, "  ward_phone: keep\n")
    assert "columns.ward_phone (values look like phone numbers)" in message


def test_values_of_whitespace_alone_count_as_blank(tmp_path: Path) -> None:
    # Three rows in four hold only a tab, a line break or a no-break space, the fourth one of five IP
    # addresses: the share is taken over the addresses, not diluted by the whitespace.
    blanks = ["\t", "\r\n", "\u00a0 "]
    values = [f"10.0.0.{i % 5 + 1}" if i % 4 == 0 else blanks[i % 3] for i in range(ROWS)]
    message = _refusal(tmp_path, {"host": values}, "  host: keep\n")
    assert "columns.host (values look like IP addresses)" in message


def test_an_address_inside_text_is_refused(tmp_path: Path) -> None:
    # Three desks written as a name and an address: too few values to be unique, so only the e-mail
    # pattern, searched inside the value, can tell.
    contacts = [f"Ward desk {i % 3} <desk{i % 3}@example-clinic.org>" for i in range(ROWS)]
    message = _refusal(tmp_path, {"contact": contacts}, "  contact: keep\n")
    assert "columns.contact (values look like e-mail addresses)" in message


@pytest.mark.parametrize(
    "kind", [pa.int32(), pa.int64(), pa.uint32(), pa.decimal128(12, 0)], ids=lambda k: str(k)
)
def test_an_integer_record_number_kept_unmarked_is_refused(tmp_path: Path, kind: pa.DataType) -> None:
    # The hospital's record number, one row per patient, stored as a number rather than text.
    numbers = pa.array([Decimal(40_000_000 + (i * 7919) % 100_003) for i in range(ROWS)]).cast(kind)
    message = _refusal(tmp_path, {"mrn": numbers}, "  mrn: keep\n")
    assert f"columns.mrn ({NEARLY_UNIQUE})" in message


def test_an_integer_record_number_repeating_now_and_then_is_refused_on_a_large_sample(tmp_path: Path) -> None:
    # A record number with a few patients admitted twice: 95 % distinct over enough rows.
    rows = INTEGER_SHARE_MIN_VALUES
    numbers = [40_000_000 + i for i in range(rows - rows // 20)] + [40_000_000] * (rows // 20)
    message = _refusal(tmp_path, {"mrn": numbers}, "  mrn: keep\n", rows)
    assert f"columns.mrn ({NEARLY_UNIQUE})" in message


@pytest.mark.parametrize(
    ("values", "distinct", "integer", "signal"),
    [
        (400, 400, True, NEARLY_UNIQUE),  # one row per patient
        (400, 380, True, None),  # a measurement over a few thousand values repeats rarely in 400 rows
        (400, 380, False, NEARLY_UNIQUE),  # text is held to the unique share at any sample size
        (UNIQUE_MIN_VALUES - 1, UNIQUE_MIN_VALUES - 1, True, None),
        (INTEGER_SHARE_MIN_VALUES, INTEGER_SHARE_MIN_VALUES * 95 // 100, True, NEARLY_UNIQUE),
        (INTEGER_SHARE_MIN_VALUES, INTEGER_SHARE_MIN_VALUES * 89 // 100, True, None),
        (SAMPLE_ROWS, SAMPLE_ROWS, True, NEARLY_UNIQUE),
    ],
)
def test_an_integer_column_is_held_to_the_unique_share_only_on_a_large_sample(
    values: int, distinct: int, integer: bool, signal: str | None
) -> None:
    assert ColumnSample("n", values, distinct, (), integer).signal == signal


@pytest.mark.parametrize("rows", [300, SAMPLE_ROWS])
def test_the_synthetic_cohorts_integer_measurements_are_no_identifiers(rows: int) -> None:
    # Survival in days and systolic pressure: nearly every row differs in a few hundred rows, and the
    # sample of 20,000 shows them for the measurements they are (survival_days: about 19 % distinct).
    con = duckdb.connect()
    con.register("cohort", generate_site(0, rows, 3))
    con.execute("CREATE TABLE t AS SELECT survival_days, systolic_bp FROM cohort").fetchall()
    survival, pressure = sample_kept_columns(con, "t", [], ["survival_days", "systolic_bp"])
    assert survival.values == rows and survival.signal is None and pressure.signal is None
    if rows == SAMPLE_ROWS:
        assert survival.distinct < 0.25 * rows
    else:
        assert 0.9 * rows <= survival.distinct < rows  # the share alone would refuse it


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_the_example_spec_publishes_a_small_synthetic_cohort(
    tmp_path: Path, spec_path: Path, master: SecretKey, seed: int
) -> None:
    # The shipped spec keeps survival_days and systolic_bp unmarked; the gateway tests ingest 300 rows.
    source = tmp_path / "patients.parquet"
    pq.write_table(generate_site(0, 300, seed), source)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = ingest(
            ParquetConnector(source),
            load_spec(spec_path),
            str(spec_path),
            master,
            store,
            jurisdiction="DE",
            override_k=True,
        ).entry
    assert entry.row_count == 300


@pytest.mark.parametrize(
    ("stored", "integer"),
    [
        ("INTEGER", True),
        ("UBIGINT", True),
        ("HUGEINT", True),
        ("DECIMAL(18,0)", True),
        ("DECIMAL(6,2)", False),
        ("DOUBLE", False),
        ("FLOAT", False),
        ("BOOLEAN", False),
        ("DATE", False),
        ("VARCHAR", False),
    ],
)
def test_integer_types_are_told_from_measurements(stored: str, integer: bool) -> None:
    assert is_integer_type(stored) is integer


def test_the_sample_is_bounded_and_repeats() -> None:
    con = duckdb.connect()
    rows = 3 * SAMPLE_ROWS
    con.execute(
        f"CREATE TABLE t AS SELECT 'v' || CAST(i % 25000 AS VARCHAR) AS a, "
        f"CASE WHEN i % 2 = 0 THEN 'x' || CAST(i AS VARCHAR) END AS b, "
        f"CAST(i % 25000 AS INTEGER) AS c, 7000000 + i AS d "
        f"FROM range({rows}) r(i)"
    ).fetchall()
    first = sample_kept_columns(con, "t", ["a", "b"], ["c", "d"])
    assert first == sample_kept_columns(con, "t", ["a", "b"], ["c", "d"])
    a, b, c, d = first
    assert a.values == SAMPLE_ROWS and 0.5 * SAMPLE_ROWS < b.values < SAMPLE_ROWS
    assert b.distinct == b.values and b.signal == NEARLY_UNIQUE
    # 25,000 values over 60,000 rows: a sample of 20,000 shows repeats, well below the unique share.
    assert a.distinct < 0.9 * a.values and a.signal is None
    # The integer columns are counted from the same sample (one query), and never matched to a pattern.
    assert (c.values, c.distinct, c.matches, c.signal) == (SAMPLE_ROWS, a.distinct, (), None)
    assert (d.values, d.distinct, d.matches, d.signal) == (SAMPLE_ROWS, SAMPLE_ROWS, (), NEARLY_UNIQUE)


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
        # An address inside text is still an address.
        ("Anna Meier <anna.meier@example.org>", "e-mail addresses"),
        ("mailto:anna.meier@example.org", "e-mail addresses"),
        ("write to anna.meier@example.org for the results", "e-mail addresses"),
        # IBANs in either case, whole or in groups of four.
        ("gb82west12345698765432", "IBANs (bank account numbers)"),
        ("de89 3704 0044 0532 0130 00", "IBANs (bank account numbers)"),
        ("De89 3704 0044 0532 0130 00", "IBANs (bank account numbers)"),
        ("NO93 8601 1117 947", "IBANs (bank account numbers)"),
        ("pt42 will need more care", None),
        # A phone number must be the whole value: dates, codes, postcodes and decimals in notes stay clean.
        ("seen 01-02-2024, discharged 05-02-2024", None),
        ("admitted 2024-01-15 10:30", None),
        ("E11.9 since 01/02/2019", None),
        ("D-10115 Berlin", None),
        ("75001", None),
        ("0.01234567", None),
        ("ratio 0.0123456789", None),
        ("dose 5 mg @ 8h", None),
    ],
)
def test_patterns_recognize_identifiers_and_leave_dates_and_codes(value: str, kind: str | None) -> None:
    con = duckdb.connect()
    matched = con.execute(f"SELECT {', '.join(p.sql('$v') for p in PATTERNS)}", {"v": value}).fetchall()[0]
    assert [p.what for p, hit in zip(PATTERNS, matched, strict=True) if hit] == ([kind] if kind else [])


def test_the_spec_tells_a_reviewed_column_from_an_unmarked_one(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            "  note: {action: keep, identifier: none}\n  sex: {action: keep, identifier: quasi}\n"
            "  room: keep\n",
        )
    )
    assert spec.columns["note"].identifier == "none"
    assert spec.columns["room"].identifier is None  # unmarked: scanned at ingest
    assert spec.quasi_identifiers == ["ward", "sex"]
    path = tmp_path / "bad.spec.yaml"
    path.write_text(HEAD + "  note: {action: keep, identifier: reviewed}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.field == "columns.note.identifier" and "'direct', 'quasi' or 'none'" in str(err.value)
