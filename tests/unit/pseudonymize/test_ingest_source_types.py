"""What a source's column types must not change: identifiers read as text (a CSV's `00123` is not the
number 123), identifiers of a kind no pseudonym reads refused, and date shifts independent of the zone the
store's DuckDB runs in."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import CsvConnector, EncodingError, ParquetConnector
from pseudonymize.errors import SpecError, StoreError
from pseudonymize.ingest import IngestResult, ingest, pseudonym_key
from pseudonymize.keys import SecretKey
from pseudonymize.pseudonym import pseudonym
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

MASTER = SecretKey(bytes(range(1, 33)))
SPEC = (
    "dataset: visits\nagreement: DSA-1\npatient_key: mrn\nk_anonymity: {k: 2}\ncolumns:\n"
    "  mrn: {action: pseudonym, identifier: direct}\n"
    "  postcode: {action: generalize, method: postcode, keep: 3, min_count: 1, identifier: quasi}\n"
)


def _spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "visits.yaml"
    path.write_text(SPEC + extra)
    return path


def _ingest(connector: CsvConnector | ParquetConnector, spec_path: Path, store: Store) -> IngestResult:
    return ingest(connector, load_spec(spec_path), str(spec_path), MASTER, store, jurisdiction="DE")


def test_identifiers_with_leading_zeros_stay_apart_and_match_their_pseudonyms(tmp_path: Path) -> None:
    source = tmp_path / "visits.csv"
    rows = ["00123,01067", "0123,01067", "123,01069", "00123,01069"]
    source.write_text("mrn,postcode\n" + "\n".join(rows) + "\n")
    spec_path = _spec(tmp_path)
    spec = load_spec(spec_path)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = _ingest(CsvConnector(source), spec_path, store).entry
        stored = store.duckdb.execute(
            f'SELECT CAST(mrn AS VARCHAR), postcode FROM "{entry.table_name}"'
        ).fetchall()
    key = pseudonym_key(MASTER, spec)
    expected = [pseudonym(key, r.split(",")[0]) for r in rows]
    assert [token for token, _ in stored] == expected  # three patients, as a Parquet or SQL source gives
    assert len(set(expected)) == 3
    assert {postcode for _, postcode in stored} == {"010"}  # the prefix of 01067, not of 1067


def test_an_identifier_column_of_another_kind_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "visits.parquet"
    pq.write_table(pa.table({"mrn": [["A1"], ["B2"]], "postcode": ["01067", "01069"]}), source)
    spec_path = _spec(tmp_path)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store, pytest.raises(SpecError) as refused:
        ingest(
            ParquetConnector(source), load_spec(spec_path), str(spec_path), MASTER, store, jurisdiction="DE"
        )
    assert refused.value.field == "columns.mrn" and "a single value" in str(refused.value)


def test_a_date_shift_does_not_depend_on_the_stores_time_zone(tmp_path: Path) -> None:
    source = tmp_path / "visits.parquet"
    # 23:30 UTC: the next day in zones east of UTC.
    onset = [dt.datetime(2024, 3, d, 23, 30, tzinfo=dt.UTC) for d in (1, 2, 3, 4)]
    table = pa.table({"mrn": ["A1", "A1", "B2", "B2"], "postcode": ["01067"] * 4, "onset": onset})
    pq.write_table(table, source)
    spec_path = _spec(tmp_path, "  onset: {action: date_shift}\n")
    shifted = []
    for i, zone in enumerate(("UTC", "Pacific/Kiritimati")):
        with Store(f"duckdb:///{tmp_path / f'zone{i}.duckdb'}") as store:
            store.duckdb.execute(f"SET GLOBAL TimeZone = '{zone}'")
            entry = _ingest(ParquetConnector(source), spec_path, store).entry
            shifted.append(store.duckdb.execute(f'SELECT onset FROM "{entry.table_name}"').fetchall())
    assert shifted[0] == shifted[1]


@pytest.mark.postgres
def test_a_value_postgresql_cannot_store_is_a_store_error_naming_no_value(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "visits.parquet"
    count = pa.array([1, 18_446_744_073_709_551_615], pa.uint64())  # more than PostgreSQL's BIGINT holds
    pq.write_table(pa.table({"mrn": ["A1", "B2"], "postcode": ["01067"] * 2, "count": count}), source)
    spec_path = _spec(tmp_path, "  count: keep\n")
    with Store(pg_url) as store, pytest.raises(StoreError) as refused:
        _ingest(ParquetConnector(source), spec_path, store)
    assert "refused a value" in str(refused.value) and "18446744073709551615" not in str(refused.value)
    with Store(pg_url) as store:
        assert store.catalog("visits") == []


def test_a_text_value_holding_a_nul_character_is_refused_before_the_store(tmp_path: Path) -> None:
    source = tmp_path / "visits.parquet"
    note = "seen by MRN-SECRET-4711\x00"  # no store, policy input or audit entry carries a NUL character
    pq.write_table(pa.table({"mrn": ["A1", "B2"], "postcode": ["01067"] * 2, "note": ["ok", note]}), source)
    spec_path = _spec(tmp_path, "  note: keep\n")
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        with pytest.raises(EncodingError) as refused:
            _ingest(ParquetConnector(source), spec_path, store)
        assert store.catalog("visits") == []
    assert (refused.value.row, refused.value.column) == (2, "note") and "MRN-SECRET" not in str(refused.value)


def test_whole_number_identifiers_of_any_numeric_type_are_pseudonymized(tmp_path: Path) -> None:
    from decimal import Decimal

    source = tmp_path / "visits.parquet"
    mrns = pa.array([Decimal(1001), Decimal(1002), Decimal(1001)], pa.decimal128(10, 0))  # NUMERIC(10,0)
    pq.write_table(pa.table({"mrn": mrns, "postcode": ["01067"] * 3}), source)
    spec_path = _spec(tmp_path)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        entry = _ingest(ParquetConnector(source), spec_path, store).entry
        tokens = store.duckdb.execute(f'SELECT mrn FROM "{entry.table_name}"').fetchall()
    assert entry.row_count == 3 and tokens[0] == tokens[2] != tokens[1]
