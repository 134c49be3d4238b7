"""Bulk pseudonyms of Arrow columns, inline and in worker processes: the same bytes as `pseudonym`."""

from __future__ import annotations

import gc
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors import ParquetConnector
from pseudonymize import column_hmac
from pseudonymize import ingest as ingest_module
from pseudonymize.column_hmac import ColumnHmac, is_hashable, offset_array, token_array
from pseudonymize.errors import IngestError
from pseudonymize.keys import SecretKey
from pseudonymize.pseudonym import date_offset, pseudonym
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

KEY = bytes(range(32))
TEXT = ["MRN-DE-00000001", " mrn-de-00000001 ", "Ünïcödé", "e\u0301", "ß", "", "日本語", "O'Brien", None, "ǆ"]


def expected(values: list[object], max_days: int) -> tuple[list[str | None], list[int | None]]:
    tokens = [None if v is None else pseudonym(KEY, str(v)) for v in values]
    offsets = [None if v is None else date_offset(KEY, str(v), max_days) for v in values]
    return tokens, offsets


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    "array",
    [
        pa.array(TEXT, pa.string()),
        pa.array(TEXT, pa.large_string()),
        pa.array([v for v in TEXT if v is None or v.isascii()], pa.string()),  # the ASCII fast path
        pa.array([1, 20, None, -3, 10**12], pa.int64()),
        pa.array(TEXT * 50, pa.string()).slice(7, 300),
    ],
    ids=["text", "large-text", "ascii", "integers", "slice"],
)
def test_tokens_and_offsets_equal_the_python_pseudonym(workers: int, array: pa.Array) -> None:
    with ColumnHmac(KEY) as hasher:
        hasher.start_workers(workers)
        assert hasher.workers == workers
        first = hasher.submit(array, 180)
        second = hasher.submit(array, None)
        hashed, without_offsets = first.result(), second.result()
    tokens, offsets = expected(array.to_pylist(), 180)
    assert token_texts(token_array(array, hashed)) == tokens
    assert offset_array(array, hashed).to_pylist() == offsets
    assert without_offsets.offsets is None and token_texts(token_array(array, without_offsets)) == tokens


def token_texts(array: pa.Array) -> list[str | None]:
    assert array.type == pa.uuid()
    return [None if v is None else str(v) for v in array.to_pylist()]


def test_only_types_with_one_text_form_are_hashed_outside_sql() -> None:
    assert is_hashable(pa.string()) and is_hashable(pa.large_string()) and is_hashable(pa.int32())
    # DuckDB and Arrow write floats, dates and decimals differently: those stay with the SQL HMAC.
    assert not any(is_hashable(t) for t in (pa.float64(), pa.date32(), pa.decimal128(10, 2), pa.binary()))


def test_a_dead_worker_fails_the_work_instead_of_hanging() -> None:
    with ColumnHmac(KEY) as hasher:
        hasher.start_workers(2)
        for worker in hasher._workers:
            worker.process.kill()
            worker.process.wait()
        futures = [hasher.submit(pa.array(["a", "b"]), 10) for _ in range(4)]
        for future in futures:
            with pytest.raises((EOFError, OSError)):
                future.result(timeout=30)


def test_ingest_in_worker_processes_stores_what_inline_ingest_stores(
    tmp_path: Path,
    cohort_parquet: Path,
    spec_path: Path,
    master: SecretKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(store_name: str) -> tuple[str, list[tuple[object, ...]]]:
        with Store(f"duckdb:///{tmp_path / store_name}") as store:
            result = ingest_module.ingest(
                ParquetConnector(cohort_parquet), load_spec(spec_path), str(spec_path), master, store,
                jurisdiction="DE",
            )  # fmt: skip
            rows = store.duckdb.execute(f'SELECT * FROM "{result.entry.table_name}"').fetchall()
            return result.entry.content_digest, rows

    inline = run("inline.duckdb")
    monkeypatch.setattr(ingest_module, "HASH_WORKERS", 2)
    monkeypatch.setattr(ingest_module, "HASH_WORKERS_AFTER_ROWS", 0)
    in_workers = run("workers.duckdb")
    assert in_workers == inline


def test_a_worker_that_cannot_run_fails_the_ingest_closed(
    tmp_path: Path,
    cohort_parquet: Path,
    spec_path: Path,
    master: SecretKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest_module, "HASH_WORKERS", 2)
    monkeypatch.setattr(ingest_module, "HASH_WORKERS_AFTER_ROWS", 0)
    monkeypatch.setattr(column_hmac.sys, "executable", "/bin/false")  # a worker that exits at once
    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as store:
        with pytest.raises(IngestError, match=r"pseudonymizing failed \((BrokenPipeError|EOFError)\)"):
            ingest_module.ingest(
                ParquetConnector(cohort_parquet), load_spec(spec_path), str(spec_path), master, store,
                jurisdiction="DE",
            )  # fmt: skip
        assert store.catalog() == []
        tables = store.duckdb.execute("SELECT table_name FROM information_schema.tables").fetchall()
    assert [t for (t,) in tables if t.startswith("staging_")] == []


def test_a_worker_that_dies_before_taking_its_key_is_reaped_and_fails_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = subprocess.Popen

    class ExitedBeforeTheKey(started):  # type: ignore[type-arg,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.wait()  # the worker is gone before the key is written to it

    monkeypatch.setattr(column_hmac.subprocess, "Popen", ExitedBeforeTheKey)
    monkeypatch.setattr(column_hmac.sys, "executable", "/bin/false")
    hasher = ColumnHmac(b"k" * 32)
    with pytest.raises(BrokenPipeError):
        hasher.start_workers(2)
    # An unreaped process would surface as an unraisable ResourceWarning, which the suite turns into an error.
    gc.collect()
    assert hasher.workers == 0
