"""Ingest end to end: no raw identifier in the store, stable pseudonyms, atomic publish, risk threshold."""

from __future__ import annotations

import base64
import json
import re
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from ingest_helpers import read_back_digest

from connectors import CsvConnector, MalformedRecord, ParquetConnector
from gateway.catalog import CatalogView
from gateway.query.execute import store_engine
from pseudonymize.errors import IngestError, RiskThresholdError, SpecError, StoreError
from pseudonymize.ingest import ingest, pseudonym_key
from pseudonymize.keys import SecretKey
from pseudonymize.pseudonym import date_offset, pseudonym
from pseudonymize.spec import load_spec
from pseudonymize.store import ConsentTerms, Store


def run(source: Path, spec_path: Path, master: SecretKey, store: Store, **kw: object):  # type: ignore[no-untyped-def]
    return ingest(
        ParquetConnector(source), load_spec(spec_path), str(spec_path), master, store, jurisdiction="DE", **kw
    )


def all_cells(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], list[object]]:
    """Every column of every table and view in the store, with its values."""
    out: dict[tuple[str, str], list[object]] = {}
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        result = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in result.description]
        rows = result.fetchall()
        for i, name in enumerate(names):
            out[(table, name)] = [r[i] for r in rows]
    return out


def test_store_holds_no_raw_identifier(
    tmp_path: Path, cohort_parquet: Path, cohort_table: pa.Table, spec_path: Path, master: SecretKey
) -> None:
    store_file = tmp_path / "store.duckdb"
    with Store(f"duckdb:///{store_file}") as store:
        result = run(cohort_parquet, spec_path, master, store)
        cells = all_cells(store.duckdb)
    mrns = set(cohort_table["patient_id"].to_pylist())
    names = set(cohort_table["name"].to_pylist())
    dobs = cohort_table["birth_date"].to_pylist()
    raw_text = mrns | names | {d.isoformat() for d in dobs}
    for (table, column), values in cells.items():
        assert not raw_text & {str(v) for v in values}, f"raw identifier in {table}.{column}"
        if values and len(values) == len(dobs):
            # Rows keep their order: no column holds any patient's own date of birth.
            assert not any(v == d for v, d in zip(values, dobs, strict=True)), f"{table}.{column}"
    assert ("ds_cohort", "name") not in cells and ("ds_cohort", "birth_date") not in cells
    # The file's bytes do not hold the identifiers in the clear either, nor any key material.
    blob = store_file.read_bytes()
    for text in list(mrns)[:300] + list(names)[:300]:
        assert text.encode() not in blob
    key = pseudonym_key(master, load_spec(spec_path))
    assert key.hex().encode() not in blob and base64.b64encode(key) not in blob
    assert result.entry.key_id == master.key_id


def test_pseudonyms_are_stable_and_unlinkable_across_agreements(
    tmp_path: Path, cohort_parquet: Path, spec_path: Path, master: SecretKey
) -> None:
    other = tmp_path / "other.spec.yaml"
    other.write_text(spec_path.read_text().replace("DSA-2026-014", "DSA-2026-099"))
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        first = run(cohort_parquet, spec_path, master, store).entry
        second = run(cohort_parquet, spec_path, master, store).entry
        # Another agreement is another key: refused unless the dataset is re-keyed on purpose, since the
        # withdrawals recorded against its tokens would match nothing in the new version.
        with pytest.raises(IngestError, match="re-key on purpose"):
            run(cohort_parquet, other, master, store)
        with pytest.raises(IngestError, match="re-key on purpose"):
            run(cohort_parquet, spec_path, SecretKey(bytes(range(32))), store)
        assert store.latest("cohort").version == 2  # type: ignore[union-attr]
        third = run(cohort_parquet, other, master, store, rekey=True).entry
        tokens = {
            e.version: store.duckdb.execute(f'SELECT patient_id FROM "{e.table_name}"').fetchall()
            for e in (first, second, third)
        }
    assert (first.version, second.version, third.version) == (1, 2, 3)
    assert tokens[1] == tokens[2] and first.content_digest == second.content_digest
    assert not {t for (t,) in tokens[1]} & {t for (t,) in tokens[3]}
    assert first.content_digest != third.content_digest


def test_python_pseudonym_finds_the_stored_patient(
    tmp_path: Path, cohort_parquet: Path, cohort_table: pa.Table, spec_path: Path, master: SecretKey
) -> None:
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        run(cohort_parquet, spec_path, master, store)
        stored = store.duckdb.execute("SELECT CAST(patient_id AS VARCHAR) FROM ds_cohort").fetchall()
        (kind,) = store.duckdb.execute("SELECT DISTINCT typeof(patient_id) FROM ds_cohort").fetchall()
    key = pseudonym_key(master, load_spec(spec_path))
    mrn = cohort_table["patient_id"][42].as_py()
    assert (pseudonym(key, mrn),) == stored[42]
    assert kind == ("UUID",)  # 16 bytes per token in the store, not 36 characters


def test_date_shift_preserves_every_interval(
    tmp_path: Path, cohort_parquet: Path, cohort_table: pa.Table, spec_path: Path, master: SecretKey
) -> None:
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        run(cohort_parquet, spec_path, master, store)
        rows = store.duckdb.execute("SELECT admission_date, discharge_date FROM ds_cohort").fetchall()
    adm = cohort_table["admission_date"].to_pylist()
    dis = cohort_table["discharge_date"].to_pylist()
    shifts = [(a2 - a1).days for (a2, _), a1 in zip(rows, adm, strict=True)]
    assert all(abs(s) <= 180 for s in shifts) and len(set(shifts)) > 50
    assert [(d2 - a2) for a2, d2 in rows] == [(d1 - a1) for a1, d1 in zip(adm, dis, strict=True)]


def test_catalog_records_what_was_published(
    tmp_path: Path, cohort_parquet: Path, spec_path: Path, master: SecretKey
) -> None:
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = run(cohort_parquet, spec_path, master, store).entry
        (latest,) = store.catalog("cohort")
        count = store.duckdb.execute("SELECT count(*) FROM ds_cohort").fetchall()[0][0]
    assert latest == entry
    assert entry.row_count == count == 3000
    assert entry.table_name == "ds_cohort__v1" and entry.dataset == "cohort"
    assert {"name": "age_band", "type": "string"} in entry.columns
    assert entry.spec_digest == load_spec(spec_path).digest
    assert entry.duo == ["DUO:0000042"] and entry.jurisdiction == "DE"
    assert entry.patient_column == "patient_id" and entry.key_context == "DSA-2026-014"
    assert entry.risk_report["quasi_identifiers"] == ["age_band", "sex", "postcode_area"]
    assert entry.risk_report["passes"] is True and entry.k_override is False
    assert len(entry.content_digest) == 64


def test_risk_below_threshold_refuses_unless_overridden(
    tmp_path: Path, cohort_parquet: Path, spec_path: Path, master: SecretKey
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text(spec_path.read_text().replace("k: 5", "k: 1000"))
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        with pytest.raises(RiskThresholdError) as err:
            run(cohort_parquet, strict, master, store)
        assert err.value.report.k_threshold == 1000 and not err.value.report.passes
        assert "below the threshold k=1000" in str(err.value)
        assert store.catalog() == []
        assert _staging_tables(store) == []
        entry = run(cohort_parquet, strict, master, store, override_k=True).entry
    assert entry.k_override is True and entry.risk_report["passes"] is False


def test_failed_ingest_keeps_the_previous_version(
    tmp_path: Path, cohort_table: pa.Table, spec_path: Path, master: SecretKey
) -> None:
    good = tmp_path / "good.csv"
    pacsv.write_csv(cohort_table, good)
    lines = good.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(lines[:2500]) + "MRN-X,too,few,fields\n" + "".join(lines[2500:]))
    types = {"birth_date": "date32", "admission_date": "date32", "discharge_date": "date32"}
    spec = load_spec(spec_path)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        first = ingest(
            CsvConnector(good, columns=types), spec, str(spec_path), master, store, jurisdiction="DE"
        ).entry
        before = store.duckdb.execute("SELECT * FROM ds_cohort").fetchall()
        with pytest.raises(MalformedRecord) as err:
            connector = CsvConnector(bad, columns=types)
            ingest(connector, spec, str(spec_path), master, store, jurisdiction="DE")
        assert err.value.line == 2501
        assert store.catalog("cohort") == [first]
        assert store.duckdb.execute("SELECT * FROM ds_cohort").fetchall() == before
        assert _staging_tables(store) == []


def test_unparsable_date_text_is_named_without_its_value(
    tmp_path: Path, cohort_table: pa.Table, spec_path: Path, master: SecretKey
) -> None:
    table = cohort_table.set_column(
        cohort_table.schema.get_field_index("admission_date"),
        "admission_date",
        pc.if_else(
            pc.equal(pa.array(range(len(cohort_table))), 7),
            "31/02/2021",
            pc.cast(cohort_table["admission_date"], pa.string()),
        ),
    )
    source = tmp_path / "text_dates.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, source)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        with pytest.raises(IngestError) as err:
            run(source, spec_path, master, store)
        assert store.catalog() == [] and _staging_tables(store) == []
    assert "column 'admission_date' holds a value that is not a date" in str(err.value)
    assert "31/02/2021" not in str(err.value)


def test_sqlite_store(tmp_path: Path, cohort_parquet: Path, spec_path: Path, master: SecretKey) -> None:
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        entry = run(cohort_parquet, spec_path, master, store).entry
        assert store.catalog("cohort") == [entry]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ds_cohort")).scalar() == 3000
    engine.dispose()


@pytest.mark.postgres
def test_postgresql_store(pg_url: str, cohort_parquet: Path, spec_path: Path, master: SecretKey) -> None:
    with Store(pg_url) as store:
        first = run(cohort_parquet, spec_path, master, store).entry
        second = run(cohort_parquet, spec_path, master, store).entry
        assert store.catalog("cohort") == [first, second]
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ds_cohort")).scalar() == 3000
        withdrawn = conn.execute(sa.text("SELECT count(*) FROM ds_cohort WHERE consent_withdrawn")).scalar()
        ages = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT age_band FROM ds_cohort__v2"))}
    engine.dispose()
    assert second.version == 2 and first.content_digest == second.content_digest
    assert 0 < int(withdrawn or 0) < 3000 and "<40" in ages


def _staging_tables(store: Store) -> list[str]:
    rows = store.duckdb.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'staging_%'"
    ).fetchall()
    return [r[0] for r in rows]


def test_k_anonymity_counts_patients_not_rows(tmp_path: Path, master: SecretKey) -> None:
    import datetime as dt

    import pyarrow.parquet as pq

    rows = 40
    pids = [f"MRN-{i // 5 if i < 5 else i}" for i in range(rows)]  # the first patient has five admissions
    table = pa.table({
        "pid": pids,
        "sex": ["X"] * 5 + ["F"] * (rows - 5),  # ... and the only 'X'
        "adm": [dt.date(2020, 1, 1)] * rows,
    })  # fmt: skip
    source = tmp_path / "multi.parquet"
    pq.write_table(table, source)
    spec_file = tmp_path / "multi.yaml"
    spec_file.write_text(
        "dataset: multi\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 5}\ncolumns:\n"
        "  pid: {action: pseudonym, identifier: direct}\n  sex: {action: keep, identifier: quasi}\n"
        "  adm: date_shift\n"
    )
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store, pytest.raises(RiskThresholdError) as err:
        ingest(
            ParquetConnector(source), load_spec(spec_file), str(spec_file), master, store, jurisdiction="DE"
        )
    assert err.value.report.smallest_class == 1


def test_decimal_columns_digest_the_same_whatever_the_batches() -> None:
    import decimal

    from pseudonymize.digest import digest_batches

    t = pa.table(
        {"x": pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("-3.50")], pa.decimal128(10, 2))}
    )
    assert digest_batches(t.schema, t.to_batches(max_chunksize=1)) == digest_batches(t.schema, t.to_batches())
    assert digest_batches(t.schema, t.to_batches()) == digest_batches(t.schema, t.to_batches())


def _uuids(raw: bytes, validity: list[bool]) -> pa.Array:
    """Arrow UUID values over `raw`, with whatever bytes `raw` holds under the null slots."""
    mask = pa.array(validity, pa.bool_()).buffers()[1]
    storage = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(validity), [mask, pa.py_buffer(raw)])
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


def test_token_columns_digest_their_16_bytes_whatever_the_batches_and_null_slots() -> None:
    from pseudonymize.digest import digest_batches

    values = bytes(range(64))
    valid = [True, False, True, True]
    t = pa.table({"patient": _uuids(values, valid)})
    whole = digest_batches(t.schema, t.to_batches())
    assert digest_batches(t.schema, t.to_batches(max_chunksize=1)) == whole
    assert digest_batches(t.schema, t.slice(1).to_batches()) != whole
    # What lies under a null slot is no value: it cannot change the digest.
    other_null = values[:16] + bytes(16) + values[32:]
    assert digest_batches(t.schema, pa.table({"patient": _uuids(other_null, valid)}).to_batches()) == whole
    changed = values[:63] + b"\xff"
    assert digest_batches(t.schema, pa.table({"patient": _uuids(changed, valid)}).to_batches()) != whole


def test_opening_the_store_sweeps_staging_left_by_a_killed_ingest(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE staging_cohort_0123456789ab AS SELECT 1 AS a")
    con.execute("CREATE TABLE stagingfoo AS SELECT 1 AS a")
    con.close()
    with Store(f"duckdb:///{path}") as store:
        tables = {
            r[0] for r in store.duckdb.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
    assert "staging_cohort_0123456789ab" not in tables and "stagingfoo" in tables


def test_pseudonym_columns_a_store_does_not_hold_as_uuid_values_fail_the_ingest(spec_path: Path) -> None:
    # A DuckDB that read the Arrow UUID tokens as text or bytes (releases before 1.4 may) would publish
    # tokens that withdrawals compare wrongly: the check run before publishing refuses them.
    from pseudonymize.ingest import _check_token_types

    spec = load_spec(spec_path)
    con = duckdb.connect()
    con.execute("CREATE TABLE as_text (patient_id VARCHAR, sex VARCHAR)").fetchall()
    con.execute("CREATE TABLE as_uuid (patient_id UUID, sex VARCHAR)").fetchall()
    with pytest.raises(IngestError, match=r"patient_id were stored as VARCHAR, not UUID"):
        _check_token_types(con, "as_text", spec, "cohort.parquet")
    _check_token_types(con, "as_uuid", spec, "cohort.parquet")


def _admissions(tmp_path: Path, key_type: pa.DataType | None = None) -> Path:
    """40 admissions: the first patient's five are the only ones of sex 'X', every other patient has one."""
    import datetime as dt
    import decimal

    key_type = key_type or pa.string()
    rows = 40
    patients = [i // 5 if i < 5 else i for i in range(rows)]
    if pa.types.is_decimal(key_type):
        pids = pa.array([decimal.Decimal(100 + p) for p in patients], key_type)
    else:
        pids = pa.array([f"MRN-{p}" for p in patients], key_type)
    table = pa.table({
        "pid": pids,
        "sex": ["X"] * 5 + ["F"] * (rows - 5),
        "adm": [dt.date(2020, 1 + i % 12, 1 + i % 28) for i in range(rows)],
    })  # fmt: skip
    source = tmp_path / f"admissions_{key_type}.parquet"
    pq.write_table(table, source)
    return source


def _admissions_spec(
    tmp_path: Path, key_action: str, adm: str = "{action: generalize, method: date, to: year}"
) -> Path:
    spec_file = tmp_path / f"admissions_{key_action}.yaml"
    spec_file.write_text(
        "dataset: admissions\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 5}\ncolumns:\n"
        f"  pid: {{action: {key_action}, identifier: direct}}\n  sex: {{action: keep, identifier: quasi}}\n"
        f"  adm: {adm}\n"
    )
    return spec_file


#: the content digest of the admissions published with the patient key dropped (sex and the admission
#: year, neither keyed): computed by the ingest before the risk report counted a dropped key's patients,
#: which the token column the report now reads must leave unchanged
_ADMISSIONS_DIGEST = "1000c534d34c6a232c6026039170801cd2b0c3a315ade2f82aa901042f66b0a0"


@pytest.mark.parametrize("key_type", [pa.string(), pa.decimal128(12, 0)], ids=["streamed", "in-sql"])
def test_k_anonymity_counts_patients_when_the_spec_drops_the_key(
    tmp_path: Path, master: SecretKey, key_type: pa.DataType
) -> None:
    source = _admissions(tmp_path, key_type)
    reports = {}
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        for action in ("drop", "pseudonym"):
            with pytest.raises(RiskThresholdError) as err:
                run(source, _admissions_spec(tmp_path, action), master, store)
            reports[action] = err.value.report
        assert store.catalog() == [] and _staging_tables(store) == []
    # Five admissions of one patient are one patient, whether the spec keeps the key or drops it.
    assert reports["drop"].smallest_class == 1 and reports["drop"].records_below_k == 5
    assert reports["drop"] == reports["pseudonym"]


@pytest.mark.parametrize("url", ["duckdb", "sqlite"])
def test_a_dropped_patient_key_leaves_no_trace_in_what_is_published(
    tmp_path: Path, master: SecretKey, url: str
) -> None:
    source = _admissions(tmp_path)
    spec_file = _admissions_spec(tmp_path, "drop")
    store_url = f"duckdb:///{tmp_path / 's.duckdb'}" if url == "duckdb" else f"sqlite:///{tmp_path / 's.db'}"
    with Store(store_url) as store:
        entry = run(source, spec_file, master, store, override_k=True).entry
        assert store.catalog("admissions") == [entry]
        if store.is_duckdb:
            cells = all_cells(store.duckdb)
            published = store.duckdb.sql(f'SELECT * FROM "{entry.table_name}"').to_arrow_table()
            assert _staging_tables(store) == []
    if url == "sqlite":
        engine = sa.create_engine(store_url)
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            cells = {}
            for table in tables:
                result = conn.execute(sa.text(f'SELECT * FROM "{table}"'))
                rows = result.fetchall()
                for i, name in enumerate(result.keys()):
                    cells[(table, name)] = [r[i] for r in rows]
            published = pa.Table.from_pylist(
                [dict(r._mapping) for r in conn.execute(sa.text(f'SELECT * FROM "{entry.table_name}"'))]
            )
        engine.dispose()
    assert [c["name"] for c in entry.columns] == ["sex", "adm"] == published.column_names
    assert entry.content_digest == _ADMISSIONS_DIGEST
    assert entry.patient_column is None and entry.risk_report["smallest_class"] == 1 and entry.k_override
    key = pseudonym_key(master, load_spec(spec_file))
    tokens = {pseudonym(key, f"MRN-{p}") for p in range(40)}
    for (table, column), values in cells.items():
        assert "__fedgate" not in column, f"{table}.{column}"
        assert not tokens & {str(v) for v in values}, f"a patient's token in {table}.{column}"


def test_a_dropped_patient_key_still_shifts_dates_and_digests_the_published_columns(
    tmp_path: Path, master: SecretKey
) -> None:
    from pseudonymize.digest import digest_batches

    source = _admissions(tmp_path)
    spec_file = _admissions_spec(tmp_path, "drop", adm="date_shift")
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = run(source, spec_file, master, store, override_k=True).entry
        published = store.duckdb.sql(f'SELECT * FROM "{entry.table_name}"').to_arrow_table()
    assert published.column_names == ["sex", "adm"]
    assert entry.content_digest == digest_batches(published.schema, published.to_batches())
    key = pseudonym_key(master, load_spec(spec_file))
    shifted = published["adm"].to_pylist()
    raw = pq.read_table(source)["adm"].to_pylist()
    offsets = {(s - r).days for s, r in zip(shifted[:5], raw[:5], strict=True)}
    assert offsets == {date_offset(key, "MRN-0", 180)}


def test_the_risk_report_token_column_is_no_output_and_absent_when_the_key_is_kept(
    tmp_path: Path, spec_path: Path, cohort_table: pa.Table
) -> None:
    from pseudonymize.transform import RISK_PATIENT_COLUMN, compile_transform

    kept = compile_transform(load_spec(spec_path), cohort_table.schema, bytes(32), str(spec_path))
    assert kept.risk_patient_column is None and RISK_PATIENT_COLUMN not in kept.select_sql
    dropped_spec = _admissions_spec(tmp_path, "drop")
    schema = pq.read_schema(_admissions(tmp_path))
    dropped = compile_transform(load_spec(dropped_spec), schema, bytes(32), str(dropped_spec))
    assert dropped.risk_patient_column == RISK_PATIENT_COLUMN
    assert dropped.output_columns == ["sex", "adm"]
    # No spec column can be named so, under its own name or as an output.
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(
        dropped_spec.read_text().replace("keep, identifier", f"keep, as: '{RISK_PATIENT_COLUMN}', identifier")
    )
    with pytest.raises(SpecError, match="not a valid column name"):
        load_spec(renamed)


RECORDED = ConsentTerms(
    diseases=("MONDO:0005015",), geographic_area=("DE", "AT"), moratorium_until=date(2026, 9, 30)
)


def _spec_with_terms(spec_path: Path) -> Path:
    """The example spec with disease-specific consent, a geographic restriction and a moratorium."""
    changed = spec_path.with_name("terms.spec.yaml")
    changed.write_text(
        re.sub(
            r"^duo: .*$",
            "duo: [DUO:0000007, DUO:0000022, DUO:0000024]\ndiseases: [MONDO:0005015]\n"
            "geographic_area: [DE, AT]\nmoratorium_until: 2026-09-30",
            spec_path.read_text(),
            count=1,
            flags=re.MULTILINE,
        )
    )
    return changed


def test_catalog_records_the_consent_terms(
    tmp_path: Path, cohort_parquet: Path, spec_path: Path, master: SecretKey
) -> None:
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    with Store(url) as store:
        entry = run(cohort_parquet, _spec_with_terms(spec_path), master, store).entry
        assert store.catalog("cohort") == [entry]
        (text,) = store.duckdb.execute("SELECT consent_terms FROM fedgate_catalog").fetchone() or ()
    assert entry.consent_terms == RECORDED and entry.duo == ["DUO:0000007", "DUO:0000022", "DUO:0000024"]
    assert json.loads(text) == {
        "diseases": ["MONDO:0005015"], "geographic_area": ["DE", "AT"],
        "moratorium_until": "2026-09-30", "use_until": None,
    }  # fmt: skip
    engine = store_engine(url)  # the gateway's read-only view
    try:
        assert CatalogView(engine).latest("cohort") == entry
    finally:
        engine.dispose()


def _forget_consent_terms(url: str) -> None:
    """Make a store's catalog what stores published before it recorded consent terms had."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE fedgate_catalog DROP COLUMN consent_terms"))
    engine.dispose()


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_store_published_before_consent_terms_still_opens_and_reads(
    request: pytest.FixtureRequest,
    kind: str,
    tmp_path: Path,
    cohort_parquet: Path,
    spec_path: Path,
    master: SecretKey,
) -> None:
    url = f"duckdb:///{tmp_path / 's.duckdb'}" if kind == "duckdb" else request.getfixturevalue("pg_url")
    with Store(url) as store:
        old = run(cohort_parquet, spec_path, master, store).entry
    _forget_consent_terms(url)
    # The gateway reads the old catalog read-only, as it is: none recorded.
    engine = store_engine(url)
    try:
        assert CatalogView(engine).latest("cohort") == old and old.consent_terms == ConsentTerms()
    finally:
        engine.dispose()
    # A Store adds the column; the old version reads as it did, and a new one records its terms.
    with Store(url) as store:
        assert store.catalog("cohort") == [old]
        if store.is_duckdb:
            assert read_back_digest(store, old.table_name) == old.content_digest
        new = run(cohort_parquet, _spec_with_terms(spec_path), master, store).entry
        assert store.catalog("cohort") == [old, new]
    assert new.version == 2 and new.consent_terms == RECORDED
    with Store(url) as store:  # opening a store that has the column changes nothing
        assert store.catalog("cohort") == [old, new]
    engine = store_engine(url)
    try:
        assert [e.consent_terms for e in CatalogView(engine).entries()] == [ConsentTerms(), RECORDED]
    finally:
        engine.dispose()


def test_malformed_consent_terms_in_the_catalog_are_a_store_error() -> None:
    assert ConsentTerms.from_json(None) == ConsentTerms()
    assert ConsentTerms.from_json(RECORDED.to_json()) == RECORDED
    for text in ('{"diseases": "MONDO:0005015"}', '{"use_until": "soon"}', "[]", "{"):
        with pytest.raises(StoreError, match="malformed consent_terms"):
            ConsentTerms.from_json(text)
