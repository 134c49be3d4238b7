"""What the ingest tests share: the digest of a published table as the store reads it back."""

from __future__ import annotations

from pseudonymize.digest import digest_batches
from pseudonymize.generalize import quote_ident
from pseudonymize.store import Store


def read_back_digest(store: Store, table_name: str, chunk_rows: int = 777) -> str:
    """The content digest of a DuckDB store's table read back, tokens as 16-byte UUID values, in batches of
    `chunk_rows` (the digest does not depend on how the rows are batched)."""
    cursor = store.duckdb.cursor()
    try:
        cursor.execute("SET SESSION arrow_lossless_conversion = true").fetchall()
        table = cursor.sql(f"SELECT * FROM {quote_ident(table_name)}").to_arrow_table()
    finally:
        cursor.close()
    return digest_batches(table.schema, table.to_batches(max_chunksize=chunk_rows))
