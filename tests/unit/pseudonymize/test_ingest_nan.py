"""A NaN in a kept float column is a value not measured, and an infinity no measurement either: the ingest
stores both as missing (NULL), counts them, and keeps the content digest equal to the stored table's.

DuckDB and PostgreSQL order NaN above every number, so a stored NaN would be counted by `x > 7.5`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from ingest_helpers import read_back_digest
from typer.testing import CliRunner

from connectors.base import Connector
from connectors.parquet import ParquetConnector
from gateway.cli import app
from gateway.synth import generate_site
from pseudonymize.generalize import quote_ident
from pseudonymize.ingest import IngestResult, ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

ROOT = Path(__file__).resolve().parents[3]
ROWS = 40
#: a NaN with a payload, a negative NaN and the plain one: every NaN is missing, whatever its bits
NAN_BITS = (0x7FF8000000000000, 0x7FF8000000000123, 0xFFF8000000000000)


class _Table(Connector):
    def __init__(self, table: pa.Table) -> None:
        self.source = "test-table"
        self._table = table

    def schema(self) -> pa.Schema:
        return self._table.schema

    def batches(self, batch_rows: int = 256_000) -> Iterator[pa.RecordBatch]:
        yield from self._table.to_batches(max_chunksize=7)  # several batches, NaN in more than one


def _measurements() -> pa.Table:
    """`x` (float64): 5.0 + i % 4 but NaN in three rows (payload bits included), -0.0 in row 5, NULL in
    row 6; `y` (float32) NaN in one row and +infinity in another; `z` a dictionary of floats with a NaN
    entry."""
    x = np.array([5.0 + i % 4 for i in range(ROWS)])
    bits = x.view(np.uint64)
    for row, nan in zip((0, 13, 27), NAN_BITS, strict=True):
        bits[row] = nan
    x[5] = -0.0
    mask = np.zeros(ROWS, dtype=bool)
    mask[6] = True
    y = np.array([1.5] * ROWS, dtype=np.float32)
    y[9] = np.nan
    y[11] = np.inf
    z = pa.array([float(i % 3) if i % 10 else float("nan") for i in range(ROWS)]).dictionary_encode()
    return pa.table({
        "pid": [f"MRN-{i}" for i in range(ROWS)],
        "g": ["a"] * ROWS,
        "x": pa.array(x, mask=mask),
        "y": pa.array(y),
        "z": z,
    })  # fmt: skip


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "nan.yaml"
    path.write_text(
        "dataset: nan\nagreement: DSA-1\npatient_key: pid\nk_anonymity: {k: 2}\ncolumns:\n"
        "  pid: {action: pseudonym, identifier: direct}\n  g: {action: keep, identifier: quasi}\n"
        "  x: {action: keep, as: value}\n  y: keep\n  z: keep\n"
    )
    return path


def _ingest(
    store: Store, tmp_path: Path, master: SecretKey, connector: Connector | None = None
) -> IngestResult:
    spec = _spec(tmp_path)
    source = connector or _Table(_measurements())
    return ingest(source, load_spec(spec), str(spec), master, store, jurisdiction="DE")


#: (NaN left, missing values, rows counted by `value > 7.5`) of column `value` (source `x`), on either store
COUNTS_SQL = (
    "SELECT count(*) FILTER (WHERE value = 'NaN'::double precision), count(*) FILTER (WHERE value IS NULL), "
    "count(*) FILTER (WHERE value > 7.5) FROM {table}"
)


def _expected_over_7_5() -> int:
    return sum(1 for i in range(ROWS) if 5.0 + i % 4 > 7.5 and i not in (0, 13, 27))


def test_duckdb_stores_nan_as_missing_and_counts_them(tmp_path: Path, master: SecretKey) -> None:
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        result = _ingest(store, tmp_path, master)
        table = quote_ident(result.entry.table_name)
        nan, missing, over = store.duckdb.execute(COUNTS_SQL.format(table=table)).fetchall()[0]
        negative_zero = store.duckdb.execute(
            f"SELECT count(*) FILTER (WHERE value = 0 AND signbit(value)) FROM {table}"
        ).fetchall()[0][0]
        others = store.duckdb.execute(
            "SELECT count(*) FILTER (WHERE NOT isfinite(y) OR NOT isfinite(z)), "
            f"count(*) FILTER (WHERE y IS NULL), "
            f"count(*) FILTER (WHERE z IS NULL) FROM {table}"
        ).fetchall()[0]
        read_back = read_back_digest(store, result.entry.table_name, chunk_rows=11)
    # The NULL row stays missing, the three NaN join it; `value > 7.5` counts only the numbers above it.
    assert (nan, missing, over) == (0, 4, _expected_over_7_5())
    assert negative_zero == 1
    assert others == (0, 2, 4)
    assert result.not_finite_as_missing == {"value": 3, "y": 2, "z": 4}
    assert result.entry.content_digest == read_back


def test_a_parquet_source_declaring_floats_not_null_stores_nan_as_missing(
    tmp_path: Path, master: SecretKey
) -> None:
    """A Parquet column written as required (pandas' float columns often are) still takes NULLs."""
    given = _measurements()
    required = pa.field("x", pa.float64(), nullable=False)
    schema = pa.schema([("pid", pa.string()), ("g", pa.string()), required, ("y", pa.float32())])
    columns = [given["pid"], given["g"], pc.fill_null(given["x"], 1.0), given["y"]]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_arrays(columns, schema=schema), path)
    assert not pq.read_schema(path).field("x").nullable
    spec = tmp_path / "nan.yaml"
    spec.write_text(_spec(tmp_path).read_text().replace("  z: keep\n", ""))
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        result = ingest(ParquetConnector(path), load_spec(spec), str(spec), master, store, jurisdiction="DE")
        table_name = quote_ident(result.entry.table_name)
        nan, missing, over = store.duckdb.execute(COUNTS_SQL.format(table=table_name)).fetchall()[0]
        read_back = read_back_digest(store, result.entry.table_name, chunk_rows=11)
    assert (nan, missing, over) == (0, 3, _expected_over_7_5())
    assert result.not_finite_as_missing == {"value": 3, "y": 2}
    assert result.entry.content_digest == read_back


@pytest.mark.postgres
def test_postgresql_stores_nan_as_missing(pg_url: str, tmp_path: Path, master: SecretKey) -> None:
    with Store(pg_url) as store:
        result = _ingest(store, tmp_path, master)
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            table = quote_ident(result.entry.table_name)
            nan, missing, over = conn.execute(sa.text(COUNTS_SQL.format(table=table))).one()
            negative_zero = conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE value = 0 AND text(value) = '-0'")
            ).scalar()
            y_nan = conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE y IN ('NaN'::real, 'Infinity'::real)")
            ).scalar()
    finally:
        engine.dispose()
    assert (nan, missing, over) == (0, 4, _expected_over_7_5())
    assert (negative_zero, y_nan) == (1, 0)
    assert result.not_finite_as_missing == {"value": 3, "y": 2, "z": 4}
    # The same source and key published in DuckDB: the same table, so the same digest.
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as duck:
        assert _ingest(duck, tmp_path, master).entry.content_digest == result.entry.content_digest


def test_the_cli_reports_how_many_nan_were_stored_as_missing(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cohort = generate_site(0, 3000, 5)
    bmi = cohort["bmi"].combine_chunks().to_numpy().copy()
    secret = 987.654321
    bmi[::100] = np.nan
    bmi[7] = -np.inf
    bmi[1] = secret  # a value the output must not show
    at = cohort.schema.get_field_index("bmi")
    cohort = cohort.set_column(at, pa.field("bmi", pa.float64()), pa.array(bmi))
    source = tmp_path / "patients.parquet"
    pq.write_table(cohort, source)
    config = tmp_path / "examples/site-de/site.toml"
    runner = CliRunner()
    assert runner.invoke(app, ["keygen", "--config", str(config)]).exit_code == 0
    assert runner.invoke(app, ["audit", "keygen", "--config", str(config)]).exit_code == 0
    result = runner.invoke(app, [
        "ingest", "--config", str(config), "--dataset", "cohort",
        "--spec", str(tmp_path / "examples/cohort.spec.yaml"), "--source", str(source),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "NaN or infinite values stored as missing: bmi 31" in result.output
    assert "987.65" not in result.output
    listing = json.loads(runner.invoke(app, ["catalog", "--config", str(config), "--json"]).output)
    assert listing[0]["row_count"] == 3000
