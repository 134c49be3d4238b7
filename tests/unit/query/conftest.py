"""Fixtures for the query tests: one pseudonymized cohort, copied with missing values into DuckDB and
PostgreSQL."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from query_helpers import (
    EXAMPLE_SPEC,
    TABLE,
    duckdb_holding,
    many_groups_table,
    postgres_schema,
    postgres_schema_holding,
)

from connectors import ParquetConnector
from gateway.query import duckdb_dialect, store_engine
from gateway.synth import generate_site
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.pseudonym import pseudonym
from pseudonymize.spec import load_spec
from pseudonymize.store import Store


@pytest.fixture(scope="session")
def cohort_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    """900 synthetic patients pseudonymized by the real ingest into a DuckDB store: (url, catalog entry)."""
    folder = tmp_path_factory.mktemp("store")
    source = folder / "patients.parquet"
    pq.write_table(generate_site(0, 900, 5), source)
    key_file = folder / "master.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    key_file.chmod(0o600)
    url = f"duckdb:///{folder / 'store.duckdb'}"
    with Store(url) as store:
        result = ingest(
            ParquetConnector(source),
            load_spec(EXAMPLE_SPEC),
            str(EXAMPLE_SPEC),
            SecretKey.from_file(key_file),
            store,
            jurisdiction="DE",
            override_k=True,
        )
    return url, result.entry


@pytest.fixture(scope="session")
def mixed_table(cohort_store: tuple[str, Any]) -> pa.Table:
    """The ingested cohort with missing values planted in group, filter and analysed columns."""
    url, entry = cohort_store
    con = duckdb.connect(url.removeprefix("duckdb:///"), read_only=True)
    try:
        table = con.sql(f'SELECT * FROM "{entry.table_name}"').to_arrow_table()
    finally:
        con.close()
    rng = np.random.default_rng(3)
    for name in ("sex", "smoking", "bmi", "systolic_bp", "admission_date", "icd10"):
        i = table.schema.get_field_index(name)
        mask = pa.array(rng.random(table.num_rows) < 0.04)
        column = pc.if_else(mask, pa.scalar(None, table.schema.field(i).type), table.column(i))
        table = table.set_column(i, pa.field(name, table.schema.field(i).type), column)
    return table


@pytest.fixture(scope="session")
def mixed_columns(mixed_table: pa.Table) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in mixed_table.schema]


@pytest.fixture(scope="session")
def mixed_frame(mixed_table: pa.Table) -> pd.DataFrame:
    return mixed_table.to_pandas()


@pytest.fixture(scope="session")
def duck_url(tmp_path_factory: pytest.TempPathFactory, mixed_table: pa.Table) -> str:
    return duckdb_holding(tmp_path_factory.mktemp("duck") / "mixed.duckdb", mixed_table)


@pytest.fixture(scope="session")
def pg_mixed_url(pg_server_url: str, mixed_table: pa.Table) -> Iterator[str]:
    """A schema of its own holding the mixed table, for the whole session (writing it once is enough)."""
    with postgres_schema_holding(pg_server_url, mixed_table) as url:
        yield url


@pytest.fixture(scope="session")
def many_groups_duck_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A DuckDB file whose `TABLE` is `many_groups_table`."""
    path = tmp_path_factory.mktemp("many") / "many.duckdb"
    con = duckdb.connect(str(path))
    try:
        con.execute(many_groups_table("duckdb")).fetchall()
    finally:
        con.close()
    return f"duckdb:///{path}"


@pytest.fixture(scope="session")
def many_groups_pg_url(pg_server_url: str) -> Iterator[str]:
    """A PostgreSQL schema of its own whose `TABLE` is `many_groups_table`, for the whole session."""
    with postgres_schema(pg_server_url, "many") as url:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(many_groups_table("postgresql")))
                conn.execute(sa.text(f'ANALYZE "{TABLE}"'))
        finally:
            engine.dispose()
        yield url


@pytest.fixture()
def engine(duck_url: str) -> Iterator[sa.Engine]:
    """An engine on the DuckDB copy of the mixed table, with no compiled text kept (duckdb_dialect.TEMPLATES)
    before or after the test."""
    duckdb_dialect.TEMPLATES.clear()
    eng = store_engine(duck_url)
    yield eng
    eng.dispose()
    duckdb_dialect.TEMPLATES.clear()


@pytest.fixture()
def token_store(tmp_path: Path, mixed_table: pa.Table) -> Iterator[tuple[sa.Engine, list[str]]]:
    """The mixed table with patient_id holding ingest's tokens as DuckDB UUID values, as a store ingests
    them (the catalog still calls the column text): an engine on it and the tokens."""
    tokens = [pseudonym(bytes(32), str(i)) for i in range(mixed_table.num_rows)]
    table = mixed_table.set_column(
        mixed_table.schema.get_field_index("patient_id"), "patient_id", pa.array(tokens)
    )
    path = tmp_path / "tokens.duckdb"
    con = duckdb.connect(str(path))
    con.register("src", table)
    con.execute(
        f'CREATE TABLE "{TABLE}" AS SELECT * REPLACE (CAST(patient_id AS UUID) AS patient_id) FROM src'
    )
    con.close()
    eng = store_engine(f"duckdb:///{path}")
    yield eng, [str(t) for t in tokens]
    eng.dispose()
