"""The content digest an ingest publishes equals the digest of the stored table read back in stored order.

The stream digests tokens and kept columns of plain types as DuckDB receives them; these tests hold that
to the finished table on every action of the example spec and on every type a kept column can have, with
NULLs, several batches, and a source that fails part way.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from ingest_helpers import read_back_digest

import pseudonymize.ingest as ingest_module
from connectors.base import Connector
from connectors.errors import ConnectorError
from pseudonymize.digest import ContentDigest
from pseudonymize.generalize import quote_ident
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import PseudonymizationSpec, load_spec
from pseudonymize.store import CatalogEntry, Store
from pseudonymize.transform import compile_transform


class _Table(Connector):
    """A connector over an Arrow table that fails with a ConnectorError after `fail_after` batches."""

    def __init__(self, table: pa.Table, fail_after: int | None = None) -> None:
        self.source = "test-table"
        self._table = table
        self._fail_after = fail_after

    def schema(self) -> pa.Schema:
        return self._table.schema

    def batches(self, batch_rows: int = 256_000) -> Iterator[pa.RecordBatch]:
        for i, batch in enumerate(self._table.to_batches(max_chunksize=batch_rows)):
            if self._fail_after is not None and i >= self._fail_after:
                raise ConnectorError(self.source, "the source went away")
            yield batch


def _with_nulls(table: pa.Table, patient_key: str = "patient_id") -> pa.Table:
    """Every column but the patient key (a row without one is refused) gets NULLs, each at its own
    stride, so rows differ in which values are missing."""
    index = pa.array(range(len(table)))
    for i, name in enumerate(table.column_names):
        if name == patient_key:
            continue
        mask = pc.equal(pc.remainder(index, 5 + i), 0)
        column = table[name].combine_chunks()
        table = table.set_column(i, name, pc.if_else(mask, pa.scalar(None, column.type), column))
    return table


def _classes_by_distinct_patients(
    store: Store, entry: CatalogEntry, spec: PseudonymizationSpec
) -> tuple[int, ...]:
    cols = ", ".join(quote_ident(c) for c in spec.quasi_identifiers)
    size = f"count(DISTINCT {quote_ident(entry.patient_column)})" if entry.patient_column else "count(*)"
    row = store.duckdb.execute(
        f"SELECT count(*), min(c), coalesce(sum(r) FILTER (WHERE c < ?), 0) "
        f"FROM (SELECT {size} AS c, count(*) AS r FROM {quote_ident(entry.table_name)} GROUP BY {cols})",
        [spec.k_anonymity.k],
    ).fetchall()[0]
    return tuple(int(v) for v in row)


def _ingest(
    tmp_path: Path, table: pa.Table, spec_path: Path, master: SecretKey
) -> tuple[Store, CatalogEntry]:
    store = Store(f"duckdb:///{tmp_path / 's.duckdb'}")
    spec = load_spec(spec_path)
    entry = ingest(
        _Table(table), spec, str(spec_path), master, store, jurisdiction="DE", override_k=True
    ).entry
    return store, entry


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 700 rows, so 3,000 rows arrive in several and the pseudonym workers take some."""
    monkeypatch.setattr(ingest_module, "SOURCE_BATCH_ROWS", 700)
    monkeypatch.setattr(ingest_module, "HASH_WORKERS_AFTER_ROWS", 1400)


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("nulls", [False, True], ids=["complete", "with-nulls"])
def test_example_spec_digest_and_risk_equal_the_stored_table(
    tmp_path: Path,
    cohort_table: pa.Table,
    spec_path: Path,
    master: SecretKey,
    nulls: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = _with_nulls(cohort_table) if nulls else cohort_table
    digested: list[list[str]] = []

    class _Recording(ContentDigest):
        def __init__(self, schema: pa.Schema, *, threads: int = 1) -> None:
            digested.append(schema.names)
            super().__init__(schema, threads=threads)

    monkeypatch.setattr(ingest_module, "ContentDigest", _Recording)
    store, entry = _ingest(tmp_path, table, spec_path, master)
    streamed, read_back = digested
    # Tokens and kept columns come from the stream; what DuckDB computed is read back.
    assert "__fedgate_pt" in streamed and {"sex", "country", "icd10", "smoking"} <= set(streamed)
    assert {"age_band", "postcode_area", "admission_date", "discharge_date"} <= set(read_back)
    assert "patient_id" not in read_back and "sex" not in read_back
    with store:
        spec = load_spec(spec_path)
        assert entry.content_digest == read_back_digest(store, entry.table_name)
        assert entry.row_count == len(table)
        risk = entry.risk_report
        assert (risk["classes"], risk["smallest_class"], risk["records_below_k"]) == (
            _classes_by_distinct_patients(store, entry, spec)
        )
        assert risk["records"] == len(table)


def _every_kept_type(rows: int) -> pa.Table:
    """One column of every type a `keep` column can hold, edge values and NULLs included."""
    floats = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324, 1.5, None]
    strings = ["", "a", "ü ß", "x" * 40, " spaced ", "\x00nul", "日本", None]
    ints = [0, 1, -1, 127, -128, 42, 7, None]
    uints = [0, 1, 255, 42, 7, 200, 3, None]
    days = [dt.date(1970, 1, 1), dt.date(1900, 2, 28), dt.date(2038, 1, 19), None, dt.date(2024, 2, 29)]
    moments = [dt.datetime(2021, 3, 4, 5, 6, 7, 891011), None, dt.datetime(1969, 12, 31, 23, 59, 59)]
    amounts = [decimal.Decimal("12.34"), decimal.Decimal("-0.01"), None, decimal.Decimal("99999999.99")]

    def cycle(values: list[object]) -> list[object]:
        return [values[i % len(values)] for i in range(rows)]

    return pa.table({
        "pid": pa.array([f"MRN-{i}" for i in range(rows)]),  # a row without a patient is refused
        "code": pa.array([i % 13 if i % 17 else None for i in range(rows)], pa.int64()),
        "s": pa.array(cycle(strings), pa.string()),
        "ls": pa.array(cycle(strings), pa.large_string()),
        "b": pa.array(cycle([True, False, None]), pa.bool_()),
        "i8": pa.array(cycle(ints), pa.int8()),
        "i16": pa.array(cycle([*ints, -32768, 32767]), pa.int16()),
        "i32": pa.array(cycle([*ints, -(2**31), 2**31 - 1]), pa.int32()),
        "i64": pa.array(cycle([*ints, -(2**63), 2**63 - 1]), pa.int64()),
        "u8": pa.array(cycle(uints), pa.uint8()),
        "u16": pa.array(cycle([*uints, 65535]), pa.uint16()),
        "u32": pa.array(cycle([*uints, 2**32 - 1]), pa.uint32()),
        "u64": pa.array(cycle([*uints, 2**64 - 1]), pa.uint64()),
        "f32": pa.array(cycle(floats), pa.float32()),
        "f64": pa.array(cycle(floats), pa.float64()),
        "d": pa.array(cycle(days), pa.date32()),
        "ts": pa.array(cycle(moments), pa.timestamp("us")),
        "tsz": pa.array(cycle(moments), pa.timestamp("ms", tz="UTC")),
        "dec": pa.array(cycle(amounts), pa.decimal128(10, 2)),
        "wide": pa.array(cycle(amounts), pa.decimal128(30, 4)),
        "bin": pa.array(cycle([b"", b"\x00\xff", None, b"abc"]), pa.binary()),
        "dict": pa.array(cycle(strings), pa.string()).dictionary_encode(),
    })  # fmt: skip


def _types_spec(tmp_path: Path, table: pa.Table) -> Path:
    """A spec pseudonymizing `pid` and `code` and keeping every other column of `table`."""
    spec_file = tmp_path / "types.yaml"
    # The dates are marked as no patient's: a patient's date is shifted or generalized, never kept.
    dates = ("d", "ts", "tsz")
    kept = "".join(
        f"  {name}: {{action: keep, identifier: none}}\n" if name in dates else f"  {name}: keep\n"
        for name in table.column_names[2:]
    )
    spec_file.write_text(
        "dataset: types\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 2}\ncolumns:\n"
        "  pid: {action: pseudonym, identifier: direct}\n  code: {action: pseudonym, identifier: quasi}\n"
        + kept
    )
    return spec_file


@pytest.mark.usefixtures("small_batches")
def test_every_kept_type_digests_as_the_stored_table(tmp_path: Path, master: SecretKey) -> None:
    table = _every_kept_type(3000)
    spec_file = _types_spec(tmp_path, table)
    store = Store(f"duckdb:///{tmp_path / 's.duckdb'}")
    result = ingest(
        _Table(table), load_spec(spec_file), str(spec_file), master, store, jurisdiction="DE", override_k=True
    )
    entry = result.entry
    with store:
        assert entry.content_digest == read_back_digest(store, entry.table_name)
        assert entry.row_count == len(table)
        # The floats' NaN and infinities are stored as missing values, -0.0 as it is.
        stored = {
            name: store.duckdb.execute(
                f"SELECT count(*) FILTER (NOT isfinite({name})), count(*) FILTER ({name} IS NULL), "
                f"count(*) FILTER ({name} = 0 AND signbit({name})) FROM {quote_ident(entry.table_name)}"
            ).fetchall()[0]
            for name in ("f32", "f64")
        }
    nan = {name: pc.sum(pc.invert(pc.is_finite(table[name]))).as_py() for name in ("f32", "f64")}
    given = {}
    for name in ("f32", "f64"):
        values = table[name].to_numpy()
        negative_zero = int(np.sum((values == 0) & np.signbit(values)))
        given[name] = (0, nan[name] + table[name].null_count, negative_zero)
    assert stored == given and nan["f64"] > 0
    assert result.not_finite_as_missing == nan


@pytest.mark.usefixtures("small_batches")
def test_a_source_failing_part_way_publishes_nothing(
    tmp_path: Path, cohort_table: pa.Table, spec_path: Path, master: SecretKey
) -> None:
    spec = load_spec(spec_path)
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        first = ingest(_Table(cohort_table), spec, str(spec_path), master, store, jurisdiction="DE").entry
        before = store.duckdb.execute("SELECT * FROM ds_cohort").fetchall()
        with pytest.raises(ConnectorError, match="went away"):
            ingest(_Table(cohort_table, fail_after=3), spec, str(spec_path), master, store, jurisdiction="DE")
        assert store.catalog("cohort") == [first]
        assert store.duckdb.execute("SELECT * FROM ds_cohort").fetchall() == before
        staging = store.duckdb.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'staging_%'"
        ).fetchall()
        assert staging == []
    # A new ingest of the same data after the failure publishes the same digest as the first.
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        again = ingest(_Table(cohort_table), spec, str(spec_path), master, store, jurisdiction="DE").entry
    assert again.content_digest == first.content_digest and again.version == 2


def test_the_stream_digests_tokens_and_plain_kept_columns_only(tmp_path: Path, master: SecretKey) -> None:
    table = _every_kept_type(10)
    spec_file = _types_spec(tmp_path, table)
    spec = load_spec(spec_file)
    compiled = compile_transform(spec, table.schema, b"k" * 32, str(spec_file))
    streamed = ingest_module._digested_in_stream(spec, table.schema, compiled.hashed_inputs)
    plain = ["s", "ls", "b", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f64", "d"]
    assert sorted(streamed) == sorted(["pid", "code", *plain])
    assert streamed["pid"].startswith("__fedgate_") and streamed["code"].startswith("__fedgate_")


def test_duckdb_stores_compressed_what_it_was_given_for_every_streamed_type(tmp_path: Path) -> None:
    """The premise of digesting in the stream: of these types, DuckDB's compressed row groups (written
    as the insert goes and again at a checkpoint) read back bit for bit what it was given: -0.0, NaN
    payloads made missing as the stream makes them (a NULL over a NaN's bits), empty and NUL-holding
    strings, extreme integers and NULLs."""
    plain = ["s", "ls", "b", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f64", "d"]
    table = _every_kept_type(300_000).select(plain)
    bits = np.asarray(table["f64"].combine_chunks().to_numpy(zero_copy_only=False)).view(np.uint64).copy()
    bits[3::1001] = 0x7FF8000000000123  # a NaN with a payload
    noisy = np.random.default_rng(7).normal(27, 5, len(bits)).round(1).view(np.uint64)
    bits[::3] = noisy[::3]  # decimals, so DuckDB picks ALP rather than a constant or dictionary
    f64 = pa.Array.from_buffers(
        pa.float64(), len(bits), [table["f64"].combine_chunks().buffers()[0], pa.py_buffer(bits)]
    )
    f64, made_missing = ingest_module._not_finite_as_null(f64)
    assert made_missing > 0 and pc.sum(pc.is_nan(f64)).as_py() == 0
    table = table.set_column(plain.index("f64"), "f64", f64)
    path = tmp_path / "t.duckdb"
    con = duckdb.connect(str(path))
    con.register("given", table)
    con.execute("CREATE TABLE t AS SELECT * FROM given")
    con.unregister("given")
    written = _stored_digests(con, plain)
    con.execute("CHECKPOINT")
    con.close()
    con = duckdb.connect(str(path))
    checkpointed = _stored_digests(con, plain)
    con.close()
    for name in plain:
        with ContentDigest(table.select([name]).schema) as given:
            for batch in table.select([name]).to_batches():
                given.update(batch)
        assert written[name] == checkpointed[name] == given.column_digests()[name], name


def _stored_digests(con: duckdb.DuckDBPyConnection, names: list[str]) -> dict[str, bytes]:
    con.execute("SET arrow_lossless_conversion = true")
    digests: dict[str, bytes] = {}
    for name in names:
        stored = con.sql(f"SELECT {quote_ident(name)} FROM t").to_arrow_table()
        with ContentDigest(stored.schema) as digest:
            for batch in stored.to_batches():
                digest.update(batch)
        digests.update(digest.column_digests())
    return digests
