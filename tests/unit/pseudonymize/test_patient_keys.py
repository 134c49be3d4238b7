"""Patient keys and date shifts: one id gets one token and one shift whatever the type it arrives as, a row
without a patient is refused, a zoned timestamp counts by its UTC day, and no shifted date gives its offset
away at the ends of the calendar."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import CsvConnector, ParquetConnector
from pseudonymize.errors import IngestError
from pseudonymize.ingest import IngestResult, derive_pseudonym_key, ingest
from pseudonymize.keys import SecretKey
from pseudonymize.pseudonym import pseudonym
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

MASTER = SecretKey(bytes(range(32)))
SPEC = (
    "dataset: visits\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 2}\n"
    "date_shift: {max_days: 3650}\ncolumns:\n"
    "  pid: {action: pseudonym, identifier: direct}\n"
    "  sex: {action: keep, identifier: quasi}\n"
    "  adm: date_shift\n"
)
#: tokens and shifted days computed before float and decimal ids took their integer's text: integer and
#: text ids must keep them, or every store's withdrawals and linked versions would stop matching
PINNED = {
    "1001": ("aa766b0c-7c68-4b50-986c-2ed352b1e983", dt.date(2020, 9, 29)),
    "P-0042": ("648d5b42-9e6f-8dd2-f762-4f78a443a8d0", dt.date(2017, 6, 17)),
}


def _ingest(
    connector: CsvConnector | ParquetConnector, tmp_path: Path, spec_text: str = SPEC
) -> tuple[IngestResult, str]:
    """The ingest's result, and the URL of the new store it published into."""
    spec_path = tmp_path / "visits.yaml"
    spec_path.write_text(spec_text)
    url = f"duckdb:///{tmp_path / f'{uuid.uuid4().hex}.duckdb'}"
    with Store(url) as store:
        spec = load_spec(spec_path)
        return ingest(connector, spec, str(spec_path), MASTER, store, jurisdiction="DE", override_k=True), url


def _published(
    connector: CsvConnector | ParquetConnector,
    tmp_path: Path,
    columns: str = "pid, adm",
    spec_text: str = SPEC,
) -> list[tuple[object, ...]]:
    """The published rows' columns, tokens as text."""
    result, url = _ingest(connector, tmp_path, spec_text)
    with Store(url) as store:
        query = f'SELECT {columns} FROM "{result.entry.table_name}"'
        return [
            tuple(str(v) if isinstance(v, uuid.UUID) else v for v in row)
            for row in store.duckdb.sql(query).fetchall()
        ]


def _parquet(tmp_path: Path, name: str, ids: pa.Array, days: list[dt.date] | None = None) -> ParquetConnector:
    path = tmp_path / f"{name}.parquet"
    days = days or [dt.date(2016, 1, 1)] * len(ids)
    pq.write_table(pa.table({"pid": ids, "sex": ["F"] * len(ids), "adm": pa.array(days, pa.date32())}), path)
    return ParquetConnector(path)


def test_integer_and_text_ids_keep_the_tokens_and_shifts_they_always_had(tmp_path: Path) -> None:
    by_int = _published(_parquet(tmp_path, "int", pa.array([1001], pa.int64())), tmp_path)
    by_text = _published(_parquet(tmp_path, "text", pa.array(["P-0042"])), tmp_path)
    assert by_int == [PINNED["1001"]] and by_text == [PINNED["P-0042"]]


@pytest.mark.parametrize(
    "ids",
    [
        pa.array([1001.0, 1002.0, 1001.0], pa.float64()),  # pandas' column of ids with one missing
        pa.array([1001.0, 1002.0, 1001.0], pa.float32()),
        pa.array([Decimal("1001.00"), Decimal("1002.00"), Decimal("1001.00")], pa.decimal128(12, 2)),
        pa.array([1001.0, 1002.0, 1001.0], pa.float64()).dictionary_encode(),
    ],
    ids=["float64", "float32", "numeric-12-2", "dictionary"],
)
def test_a_float_or_decimal_id_is_the_patient_of_its_integer(tmp_path: Path, ids: pa.Array) -> None:
    csv = tmp_path / "visits.csv"
    csv.write_text("pid,sex,adm\n1001,F,2016-01-01\n1002,F,2016-01-01\n1001,F,2016-01-01\n")
    from_text = _published(CsvConnector(csv), tmp_path)
    from_numbers = _published(_parquet(tmp_path, "numbers", ids), tmp_path)
    assert from_numbers == from_text  # the same tokens and the same date shifts
    assert from_numbers[0] == PINNED["1001"]
    # A steward's withdrawal of "1001" records this token (gateway.consent.pseudonyms): it matches.
    withdrawn = pseudonym(derive_pseudonym_key(MASTER, "DSA-1"), "1001")
    assert [token for token, _ in from_numbers].count(withdrawn) == 2


def test_a_float_id_column_that_is_no_patient_key_gets_its_integers_tokens(tmp_path: Path) -> None:
    path = tmp_path / "visits.parquet"
    ids = ["P-0042", "P-0043"]
    mothers = pa.array([1001.0, float("nan")], pa.float64())  # NaN: no mother recorded, as in pandas
    pq.write_table(pa.table({"pid": ids, "sex": ["F", "F"], "mother": mothers}), path)
    spec = SPEC.replace("  adm: date_shift\n", "  mother: {action: pseudonym, identifier: direct}\n")
    stored = _published(ParquetConnector(path), tmp_path, "mother", spec)
    assert stored == [(PINNED["1001"][0],), (None,)]


@pytest.mark.parametrize(
    ("ids", "why"),
    [
        (pa.array([1001.0, 1001.5], pa.float64()), "not a whole number"),
        (pa.array([1001.0, float("inf")], pa.float64()), "not a whole number"),
        (pa.array([Decimal("1001.00"), Decimal("1001.50")], pa.decimal128(12, 2)), "not a whole number"),
        (pa.array([1001.0, 2.0**60], pa.float64()), "cannot hold exactly"),
        (pa.array([1001.0, 2.0**25], pa.float32()), "cannot hold exactly"),
    ],
    ids=["fraction", "infinity", "decimal-fraction", "beyond-2-53", "float32-beyond-2-24"],
)
def test_an_id_that_is_no_whole_number_is_refused_naming_the_column(
    tmp_path: Path, ids: pa.Array, why: str
) -> None:
    with pytest.raises(IngestError) as refused:
        _ingest(_parquet(tmp_path, "numbers", ids), tmp_path)
    assert "column 'pid'" in refused.value.detail and why in refused.value.detail
    assert "1001" not in str(refused.value) and "1152921504606846976" not in str(refused.value)


@pytest.mark.parametrize(
    "lines",
    [
        ["P1,F,2016-01-01", "P2,M,2016-01-02", ",F,2016-01-03"],  # one token for every blank row
        ["P1,F,2016-01-01", "P2,M,2016-01-02", "  ,F,2016-01-03"],
        ["P1,F,2016-01-01", "P2,M,2016-01-02", "\t,F,2016-01-03"],
    ],
    ids=["empty", "spaces", "tab"],
)
def test_a_csv_row_without_a_patient_key_is_refused_naming_the_column_and_row(
    tmp_path: Path, lines: list[str]
) -> None:
    csv = tmp_path / "visits.csv"
    csv.write_text("pid,sex,adm\n" + "\n".join(lines) + "\n")
    with pytest.raises(IngestError) as refused:
        _ingest(CsvConnector(csv), tmp_path)
    assert "'pid' is empty in row 3 of the source" in refused.value.detail


@pytest.mark.parametrize(
    "ids",
    [pa.array(["P1", None, "P3"]), pa.array([1.0, float("nan"), 3.0]), pa.array([1, None, 3], pa.int64())],
    ids=["null-text", "nan", "null-integer"],
)
def test_a_parquet_row_without_a_patient_key_is_refused_not_left_unshifted(
    tmp_path: Path, ids: pa.Array, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pseudonymize.ingest as ingest_module

    # In the second batch: the row is counted across batches.
    monkeypatch.setattr(ingest_module, "SOURCE_BATCH_ROWS", 2)
    with pytest.raises(IngestError) as refused:
        _ingest(_parquet(tmp_path, "visits", ids), tmp_path)
    assert "'pid' is empty in row 2 of the source" in refused.value.detail
    monkeypatch.setattr(ingest_module, "SOURCE_BATCH_ROWS", 1)
    with pytest.raises(IngestError) as refused:
        _ingest(_parquet(tmp_path, "visits", ids), tmp_path)
    assert "row 2 of the source" in refused.value.detail


def test_one_instant_is_one_day_in_a_column_mixing_dates_and_zoned_timestamps(tmp_path: Path) -> None:
    # 2024-01-04 21:00 UTC written in three zones, and a plain date: the column is read as text.
    moments = ["2024-01-05T02:00:00+05:00", "2024-01-04T21:00:00Z", "2024-01-04T16:00:00-05:00", "2024-01-04"]
    csv = tmp_path / "visits.csv"
    csv.write_text("pid,sex,adm\n" + "".join(f"P1,F,{m}\n" for m in moments))
    shifted = set(_published(CsvConnector(csv), tmp_path, "adm"))
    # As a typed zoned timestamp is shifted: by its day in UTC.
    zoned = tmp_path / "zoned.parquet"
    instant = dt.datetime(2024, 1, 4, 21, tzinfo=dt.UTC)
    pq.write_table(
        pa.table({"pid": ["P1"], "sex": ["F"], "adm": pa.array([instant], pa.timestamp("s", "UTC"))}), zoned
    )
    assert len(shifted) == 1 and shifted == set(_published(ParquetConnector(zoned), tmp_path, "adm"))


@pytest.mark.parametrize("placeholder", [dt.date(9999, 12, 31), dt.date(1, 1, 1), dt.date(9990, 1, 3)])
@pytest.mark.parametrize("patient", ["P1", "P2"])  # offsets +2623 and -1866: refused all the same
def test_a_date_near_either_end_of_the_calendar_is_refused_whatever_the_offset(
    tmp_path: Path, placeholder: dt.date, patient: str
) -> None:
    days = [dt.date(2016, 1, 1), placeholder]
    with pytest.raises(IngestError) as refused:
        _ingest(_parquet(tmp_path, "visits", pa.array([patient] * 2), days), tmp_path)
    detail = refused.value.detail
    assert "column 'adm' holds a date before 0010-12-30 or after 9990-01-02" in detail


def test_placeholder_dates_in_text_are_refused_and_the_last_day_allowed_is_shifted(tmp_path: Path) -> None:
    csv = tmp_path / "visits.csv"
    csv.write_text("pid,sex,adm\nP1,F,2016-01-01\nP1,F,9999-12-31T00:00:00Z\n")
    with pytest.raises(IngestError, match="column 'adm' holds a date before"):
        _ingest(CsvConnector(csv), tmp_path)
    edge = [dt.date(9990, 1, 2), dt.date(10, 12, 30)]
    shifted = _published(_parquet(tmp_path, "edge", pa.array(["P1", "P2"]), edge), tmp_path, "adm")
    assert [day for (day,) in shifted] == [dt.date(9997, 3, 9), dt.date(5, 11, 20)]  # offsets +2623, -1866


def test_a_placeholder_date_bound_for_a_sql_store_is_refused_before_it(tmp_path: Path) -> None:
    """A shifted 9999-12-31 was past the dates Python holds: the SQL store's insert raised OverflowError."""
    spec_path = tmp_path / "visits.yaml"
    spec_path.write_text(SPEC)
    source = _parquet(tmp_path, "visits", pa.array(["P-0042", "P-0042"]), [dt.date(2016, 1, 1), dt.date.max])
    with Store(f"sqlite:///{tmp_path / 's.sqlite'}") as store:
        with pytest.raises(IngestError, match="column 'adm' holds a date"):
            ingest(
                source,
                load_spec(spec_path),
                str(spec_path),
                MASTER,
                store,
                jurisdiction="DE",
                override_k=True,
            )
        assert store.catalog("visits") == []
