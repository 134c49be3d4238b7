"""The store's publishing transaction: a failed publish leaves nothing behind, whatever the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from pseudonymize.errors import StoreError
from pseudonymize.generalize import quote_ident
from pseudonymize.store import CatalogEntry, Store, now_utc

SCHEMA = pa.schema([("pid", pa.string()), ("admitted", pa.date32())])


class AuditDown(Exception):
    """The audit log refusing the publication record."""


def _entry(rows: int) -> CatalogEntry:
    return CatalogEntry(
        dataset="visits",
        version=0,
        table_name="",
        published_at=now_utc(),
        row_count=rows,
        columns=[{"name": f.name, "type": str(f.type)} for f in SCHEMA],
        content_digest="0" * 64,
        spec_digest="1" * 64,
        key_id="fp:0123456789abcdef",
        key_context="DSA-1",
        duo=[],
        jurisdiction="DE",
    )


def _batches(days: list[int]) -> Iterator[pa.RecordBatch]:
    # Days since 1970-01-01: 2,932,897 is 10000-01-01, the first day Python's dates cannot hold.
    pids = [f"P{i}" for i in range(len(days))]
    yield pa.RecordBatch.from_arrays(
        [pa.array(pids), pa.array(days, pa.int32()).view(pa.date32())], schema=SCHEMA
    )


def _audit_down(entry: CatalogEntry) -> None:
    raise AuditDown(f"cannot record {entry.table_name}")


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


def _relations(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        found = sa.inspect(engine)
        return set(found.get_table_names()) | set(found.get_view_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_publish_the_audit_log_refuses_leaves_nothing_and_the_next_one_publishes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(kind, tmp_path, request)
    with Store(url) as store:
        with pytest.raises(AuditDown):
            store.publish_batches(SCHEMA, _batches([19_000, 19_001]), _entry(2), _audit_down)
        assert store.catalog() == []
        assert _relations(url) == {"fedgate_catalog"}
        published = store.publish_batches(SCHEMA, _batches([19_000, 19_001]), _entry(2))
        assert (published.version, published.table_name) == (1, "ds_visits__v1")
        assert store.catalog("visits") == [published]
    assert _relations(url) == {"fedgate_catalog", "ds_visits__v1", "ds_visits"}


def test_a_duckdb_publish_the_audit_log_refuses_leaves_nothing(tmp_path: Path) -> None:
    with Store(f"duckdb:///{tmp_path / 'store.duckdb'}") as store:
        con = store.duckdb
        con.execute("CREATE TABLE staging_visits AS SELECT 'P1' AS pid, DATE '2024-01-02' AS admitted")
        with pytest.raises(AuditDown):
            store.publish_duckdb_table("staging_visits", _entry(1), _audit_down)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert tables == {"fedgate_catalog", "staging_visits"} and store.catalog() == []
        assert store.publish_duckdb_table("staging_visits", _entry(1)).table_name == "ds_visits__v1"


def test_a_date_sqlite_cannot_hold_is_a_store_error_naming_its_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        with pytest.raises(StoreError) as err:
            store.publish_batches(SCHEMA, _batches([19_000, 2_932_897]), _entry(2))
        assert "column 'admitted' (date32[day]) holds a date outside the years 1 to 9999" in str(err.value)
        assert "nothing was published" in str(err.value) and "10000" not in str(err.value)
        assert store.catalog() == [] and _relations(url) == {"fedgate_catalog"}
        assert store.publish_batches(SCHEMA, _batches([19_000]), _entry(1)).version == 1


@pytest.mark.postgres
def test_postgresql_still_holds_a_date_past_9999(pg_url: str) -> None:
    with Store(pg_url) as store:
        entry = store.publish_batches(SCHEMA, _batches([2_932_897]), _entry(1))
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        held = conn.execute(sa.text(f"SELECT admitted::text FROM {quote_ident(entry.table_name)}")).scalar()
    engine.dispose()
    assert held == "10000-01-01"


def test_a_table_an_earlier_failed_publish_left_in_sqlite_no_longer_blocks_the_dataset(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # what a failed publish left before DDL ran inside the transaction
        conn.execute(sa.text("CREATE TABLE ds_visits__v1 (pid TEXT, admitted DATE)"))
    engine.dispose()
    with Store(url) as store:
        published = store.publish_batches(SCHEMA, _batches([19_000, 19_001]), _entry(2))
        assert published.version == 1 and store.catalog("visits") == [published]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT pid, admitted FROM ds_visits")).all()
    engine.dispose()
    assert [(pid, str(day)) for pid, day in rows] == [("P0", "2022-01-08"), ("P1", "2022-01-09")]
