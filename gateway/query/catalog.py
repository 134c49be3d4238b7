"""Read the store's catalog through the query engine, so a query never opens the store a second way."""

from __future__ import annotations

import duckdb
import sqlalchemy as sa

from gateway.query.errors import ExecutionError
from pseudonymize.store import CATALOG, CatalogEntry


def latest_entry(engine: sa.Engine, dataset: str) -> CatalogEntry | None:
    """The newest published version of `dataset`, or None when the catalog has none."""
    # DuckDB refuses a read-write Store and a read-only engine on one file in one process, so the
    # pipeline reads the catalog here rather than through pseudonymize.store.Store.
    # Every column there is: a catalog no Store has opened since `consent_terms` was added lacks it, and the
    # entry reads its absence as none recorded (pseudonymize.store).
    sql = sa.text(f"SELECT * FROM {CATALOG} WHERE dataset = :d ORDER BY version DESC LIMIT 1")
    try:
        with engine.connect() as conn:
            row = conn.execute(sql, {"d": dataset}).mappings().first()
    except (sa.exc.SQLAlchemyError, duckdb.Error) as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        raise ExecutionError(f"cannot read the catalog ({type(cause).__name__})") from None
    return CatalogEntry.from_row(dict(row)) if row is not None else None


def catalog_columns(entry: CatalogEntry) -> list[tuple[str, str]]:
    """The (name, Arrow type name) pairs `compile_query` takes."""
    return [(c["name"], c["type"]) for c in entry.columns]
