"""The pseudonymized store that queries read: versioned dataset tables plus a catalog, published atomically.

A DuckDB file is the default; any SQLAlchemy URL works too (PostgreSQL is tested). Each published version
is a table `ds_<dataset>__v<n>`; the view `ds_<dataset>` points at the newest one; the table
`fedgate_catalog` records per version its row count, columns and types, content digest, spec digest,
key id (never a key), consent codes and the parameters some of them need, jurisdiction and
re-identification risk report. Publishing renames or creates the version table, inserts the catalog row and
repoints the view in one transaction, so a failed ingest leaves the previous version exactly as it was
and nothing of its own (a SQLite store runs its DDL inside that transaction too, see `_transactional_ddl`).

A catalog written before a column was added gets it when a Store opens it (NULL for the rows it holds); a
reader that only reads it (the gateway, read-only) finds the column absent, and both read an absent or
NULL value as the column's default.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from psycopg import Error as DriverError  # what COPY raises itself, outside SQLAlchemy

from connectors.errors import mask_credentials
from connectors.sql import shown_url
from pseudonymize.errors import StoreError
from pseudonymize.generalize import quote_ident

CATALOG = "fedgate_catalog"
_CATALOG_COLUMNS = (
    "dataset", "version", "table_name", "published_at", "row_count", "columns", "content_digest",
    "spec_digest", "key_id", "key_context", "duo", "jurisdiction", "risk_report", "source", "k_override",
    "patient_column", "consent_terms",
)  # fmt: skip
_JSON_FIELDS = ("columns", "duo", "risk_report")
_ADDED_COLUMNS = ("consent_terms",)
"""Catalog columns (text, nullable) added after stores were published; NULL reads as the field's default."""


BeforeCommit = Callable[["CatalogEntry"], None]
"""Called with the version about to be published, inside its transaction (`Store.publish_duckdb_table`)."""


@dataclass(frozen=True)
class ConsentTerms:
    """The parameters of a dataset's DUO codes that the policy reads (docs/policy.md, "Input"): the disease
    terms of disease-specific consent (DUO:0000007), the countries of a geographic restriction
    (DUO:0000022; None: the site's own country), the last day of a publication moratorium (DUO:0000024)
    and of a time limit on use (DUO:0000025). The defaults say none is recorded, as for a version
    published before the catalog kept them."""

    diseases: tuple[str, ...] = ()
    geographic_area: tuple[str, ...] | None = None
    moratorium_until: date | None = None
    use_until: date | None = None

    def to_dict(self) -> dict[str, Any]:
        """The terms as JSON values: lists of strings, days as `YYYY-MM-DD`, None where none is recorded."""
        return {
            "diseases": list(self.diseases),
            "geographic_area": None if self.geographic_area is None else list(self.geographic_area),
            "moratorium_until": _iso(self.moratorium_until),
            "use_until": _iso(self.use_until),
        }

    def to_json(self) -> str:
        """The terms as the catalog's `consent_terms` holds them."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ConsentTerms:
        """Terms from the catalog's `consent_terms`; NULL (a version published before it) records none."""
        if text is None:
            return cls()
        try:
            data = json.loads(text)
            diseases, area = data.get("diseases", []), data.get("geographic_area")
            if not _strings(diseases) or not (area is None or _strings(area)):
                raise TypeError("not a list of strings")
            return cls(
                diseases=tuple(diseases),
                geographic_area=None if area is None else tuple(area),
                moratorium_until=_day(data.get("moratorium_until")),
                use_until=_day(data.get("use_until")),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise StoreError(f"the catalog holds malformed consent_terms ({type(exc).__name__})") from None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _iso(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def _day(text: Any) -> date | None:
    return None if text is None else date.fromisoformat(text)


@dataclass(frozen=True)
class CatalogEntry:
    """One published version of a dataset, as the catalog records it."""

    dataset: str
    version: int
    table_name: str
    published_at: str
    row_count: int
    columns: list[dict[str, str]]
    content_digest: str
    spec_digest: str
    key_id: str
    key_context: str
    duo: list[str]
    jurisdiction: str
    risk_report: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    k_override: bool = False
    #: the stored column holding the patient pseudonym (for consent withdrawals), when the spec names one
    patient_column: str | None = None
    #: the parameters of the dataset's DUO codes (none recorded for versions published before they were)
    consent_terms: ConsentTerms = field(default_factory=ConsentTerms)

    def row(self) -> dict[str, Any]:
        """The entry as a catalog row, JSON fields serialized, without `consent_terms` (the steward's
        listings add it as an object, `GET /v1/steward/datasets` and `fedgate catalog`). The catalog stores
        `stored_row()`."""
        out: dict[str, Any] = {c: getattr(self, c) for c in _CATALOG_COLUMNS if c != "consent_terms"}
        for f in _JSON_FIELDS:
            out[f] = json.dumps(out[f], sort_keys=True)
        return out

    def stored_row(self) -> dict[str, Any]:
        """The row the catalog stores: `row()` and the consent terms as JSON text."""
        return {**self.row(), "consent_terms": self.consent_terms.to_json()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CatalogEntry:
        """Rebuild an entry from a catalog row."""
        data = dict(row)
        for f in _JSON_FIELDS:
            data[f] = json.loads(data[f])
        data["published_at"] = str(data["published_at"])
        data["k_override"] = bool(data["k_override"])
        # Absent from a catalog no Store has opened since the column was added; NULL in its older rows.
        data["consent_terms"] = ConsentTerms.from_json(data.get("consent_terms"))
        return cls(**data)


def version_table(dataset: str, version: int) -> str:
    """The name of the table that holds one version of a dataset."""
    return f"ds_{dataset}__v{version}"


def dataset_view(dataset: str) -> str:
    """The view that always shows the newest published version of a dataset."""
    return f"ds_{dataset}"


def now_utc() -> str:
    """The publication timestamp format of the catalog (RFC 3339, UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_CATALOG_DDL = f"""CREATE TABLE IF NOT EXISTS {CATALOG} (
    dataset VARCHAR NOT NULL, version INTEGER NOT NULL, table_name VARCHAR NOT NULL,
    published_at VARCHAR NOT NULL, row_count BIGINT NOT NULL, columns VARCHAR NOT NULL,
    content_digest VARCHAR NOT NULL, spec_digest VARCHAR NOT NULL, key_id VARCHAR NOT NULL,
    key_context VARCHAR NOT NULL, duo VARCHAR NOT NULL, jurisdiction VARCHAR NOT NULL,
    risk_report VARCHAR NOT NULL, source VARCHAR NOT NULL, k_override BOOLEAN NOT NULL,
    patient_column VARCHAR, consent_terms VARCHAR, PRIMARY KEY (dataset, version))"""


def _sa_type(t: pa.DataType) -> sa.types.TypeEngine[Any]:
    """The column type a SQLAlchemy store gives an Arrow type: the values a DuckDB store would hold.

    A float32 column stays single precision (REAL), so filters and statistics read the values DuckDB's
    FLOAT holds, not the double its shortest decimal text parses to; a timestamp with a time zone stays
    one (TIMESTAMPTZ), so the instant is kept whatever offset the CSV text carries and compared as an
    instant whatever the session's time zone."""
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_integer(t):
        return sa.BigInteger() if t.bit_width > 32 else sa.Integer()
    if pa.types.is_floating(t) and t.bit_width <= 32:
        return sa.REAL()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return sa.Float(precision=53)
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    return sa.Text()


class Store:
    """A pseudonymized store at a URL: `duckdb:///path` (default) or any SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._engine: sa.Engine | None = None
        try:
            if url.startswith("duckdb:///"):
                path = url.removeprefix("duckdb:///")
                if path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._duck = duckdb.connect(path)
                self._duck.execute(_CATALOG_DDL).fetchall()
                for name in _ADDED_COLUMNS:
                    self._duck.execute(
                        f"ALTER TABLE {CATALOG} ADD COLUMN IF NOT EXISTS {name} VARCHAR"
                    ).fetchall()
                self._sweep_staging()
            else:
                self._engine = sa.create_engine(url, hide_parameters=True)
                if self._engine.dialect.name == "sqlite":
                    _transactional_ddl(self._engine)
                with self._engine.begin() as conn:
                    conn.execute(sa.text(_CATALOG_DDL.replace("VARCHAR", "TEXT")))
                    _add_columns(conn)
        except duckdb.IOException as exc:
            raise StoreError(f"cannot open the store at {self.display_url}: {_io_problem(exc)}") from None
        except (duckdb.Error, sa.exc.SQLAlchemyError, ImportError) as exc:  # ImportError: a driver missing
            raise StoreError(f"cannot open the store at {self.display_url}: {type(exc).__name__}") from None

    def _sweep_staging(self) -> None:
        """Drop staging tables an ingest killed mid-way left behind; DuckDB's file lock means no ingest
        is running while this connection holds the store."""
        con = self.duckdb
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'staging\\_%' ESCAPE '\\'"
        ).fetchall()
        for (table,) in rows:
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}").fetchall()

    @property
    def display_url(self) -> str:
        """The URL without any password, for messages (`<unparsable URL>` for text that is no URL)."""
        if self._duck is not None or self.url.startswith("duckdb:"):
            return self.url
        try:
            return mask_credentials(shown_url(self.url))
        except (sa.exc.ArgumentError, ValueError):
            return "<unparsable URL>"

    @property
    def is_duckdb(self) -> bool:
        """True for the embedded DuckDB store."""
        return self._duck is not None

    @property
    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection of an embedded store."""
        if self._duck is None:
            raise StoreError("this store is not a DuckDB store")
        return self._duck

    def close(self) -> None:
        """Release the connection(s)."""
        if self._duck is not None:
            self._duck.close()
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the catalog -------------------------------------------------------------------------------

    def catalog(self, dataset: str | None = None) -> list[CatalogEntry]:
        """Every published version, oldest first (of one dataset when named)."""
        cols = ", ".join(_CATALOG_COLUMNS)
        where = " WHERE dataset = :d" if dataset is not None else ""
        sql = f"SELECT {cols} FROM {CATALOG}{where} ORDER BY dataset, version"
        try:
            if self._duck is not None:
                cur = self._duck.execute(sql.replace(":d", "$d"), {"d": dataset} if dataset else {})
                rows = [dict(zip(_CATALOG_COLUMNS, r, strict=True)) for r in cur.fetchall()]
            else:
                assert self._engine is not None
                with self._engine.connect() as conn:
                    result = conn.execute(sa.text(sql), {"d": dataset} if dataset else {})
                    rows = [dict(r._mapping) for r in result]
        except (duckdb.Error, sa.exc.SQLAlchemyError) as exc:
            raise StoreError(f"cannot read the catalog of {self.display_url}: {type(exc).__name__}") from None
        return [CatalogEntry.from_row(r) for r in rows]

    def latest(self, dataset: str) -> CatalogEntry | None:
        """The newest published version of a dataset, or None."""
        entries = self.catalog(dataset)
        return entries[-1] if entries else None

    def _next_version(self, dataset: str) -> int:
        entries = self.catalog(dataset)
        return entries[-1].version + 1 if entries else 1

    # -- publishing ----------------------------------------------------------------------------------------

    def publish_duckdb_table(
        self, staging: str, entry: CatalogEntry, before_commit: BeforeCommit | None = None
    ) -> CatalogEntry:
        """Publish a staging table of this DuckDB store as the dataset's next version, atomically.
        `before_commit` hears the version as it will be published, last before the commit: should it
        raise, nothing is published."""
        con = self.duckdb
        con.execute("BEGIN TRANSACTION").fetchall()
        try:
            version = self._next_version(entry.dataset)
            table = version_table(entry.dataset, version)
            final = _with(entry, version=version, table_name=table)
            con.execute(f"ALTER TABLE {quote_ident(staging)} RENAME TO {quote_ident(table)}").fetchall()
            self._insert_catalog_duck(final)
            view = quote_ident(dataset_view(entry.dataset))
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {quote_ident(table)}").fetchall()
            if before_commit is not None:
                before_commit(final)
            con.execute("COMMIT").fetchall()
        except BaseException:
            con.execute("ROLLBACK").fetchall()
            raise
        return final

    def _insert_catalog_duck(self, entry: CatalogEntry) -> None:
        row = entry.stored_row()
        marks = ", ".join(f"${c}" for c in _CATALOG_COLUMNS)
        self.duckdb.execute(
            f"INSERT INTO {CATALOG} ({', '.join(_CATALOG_COLUMNS)}) VALUES ({marks})", row
        ).fetchall()

    def publish_batches(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        entry: CatalogEntry,
        before_commit: BeforeCommit | None = None,
    ) -> CatalogEntry:
        """Publish a stream of pseudonymized batches into a SQLAlchemy store, atomically (`before_commit`
        as for `publish_duckdb_table`)."""
        assert self._engine is not None, "DuckDB stores publish their staging table in place"
        try:
            return self._publish_batches(schema, batches, entry, before_commit)
        except DriverError as exc:
            # Raised by the driver itself during COPY (a NUL byte PostgreSQL text cannot hold, say).
            raise StoreError(
                f"publishing to {self.display_url} failed: the database refused a value "
                f"({type(exc).__name__}); nothing was published"
            ) from None
        except sa.exc.SQLAlchemyError as exc:
            # Nothing was published: the transaction rolled back. Driver messages may quote rows.
            raise StoreError(f"publishing to {self.display_url} failed ({type(exc).__name__})") from None

    def _publish_batches(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        entry: CatalogEntry,
        before_commit: BeforeCommit | None,
    ) -> CatalogEntry:
        assert self._engine is not None
        with self._engine.begin() as conn:
            version = self._next_version_in(conn, entry.dataset)
            table_name = version_table(entry.dataset, version)
            final = _with(entry, version=version, table_name=table_name)
            table = sa.Table(
                table_name, sa.MetaData(), *(sa.Column(f.name, _sa_type(f.type)) for f in schema)
            )
            if sa.inspect(conn).has_table(table_name):
                # No catalog row names this version (it is the next one): the table is what a failed
                # publish left in a SQLite store before its DDL ran inside the transaction. It was never
                # published; keeping it would refuse every later ingest of the dataset.
                table.drop(conn)
            table.create(conn)
            if conn.dialect.name == "postgresql":
                _copy_postgres(conn, table_name, schema, batches)
            else:
                for batch in batches:
                    if batch.num_rows:
                        conn.execute(table.insert(), self._python_rows(batch))
            conn.execute(
                sa.text(f"INSERT INTO {CATALOG} ({', '.join(_CATALOG_COLUMNS)}) "
                        f"VALUES ({', '.join(':' + c for c in _CATALOG_COLUMNS)})"),
                final.stored_row(),
            )  # fmt: skip
            # Drop and create rather than replace: a new version may have different columns.
            view = quote_ident(dataset_view(entry.dataset))
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {view}"))
            conn.execute(sa.text(f"CREATE VIEW {view} AS SELECT * FROM {quote_ident(table_name)}"))
            if before_commit is not None:
                before_commit(final)
        return final

    def _python_rows(self, batch: pa.RecordBatch) -> list[dict[str, Any]]:
        """A batch's rows as the Python values a driver without Arrow or COPY takes (SQLite).

        Python's dates and times end at year 9999, DuckDB's and PostgreSQL's do not: a date shifted past
        it (a 9999-12-31 placeholder) has no Python value, and the store cannot hold it."""
        try:
            rows: list[dict[str, Any]] = batch.to_pylist()
        except OverflowError:
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                try:
                    column.to_pylist()
                except OverflowError:
                    raise StoreError(
                        f"publishing to {self.display_url} failed: column {name!r} ({column.type}) holds a "
                        f"date outside the years 1 to 9999, which this store cannot hold; nothing was "
                        f"published"
                    ) from None
            raise
        return rows

    @staticmethod
    def _next_version_in(conn: sa.Connection, dataset: str) -> int:
        # Lock the catalog so two concurrent ingests of one dataset cannot take the same version number.
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"LOCK TABLE {CATALOG} IN SHARE ROW EXCLUSIVE MODE"))
        found = conn.execute(
            sa.text(f"SELECT max(version) FROM {CATALOG} WHERE dataset = :d"), {"d": dataset}
        )
        current = found.scalar()
        return int(current) + 1 if current is not None else 1

    def read_table(self, entry: CatalogEntry, batch_rows: int = 256_000) -> Iterator[pa.RecordBatch]:
        """Stream a published version (DuckDB: in stored order)."""
        sql = f"SELECT * FROM {quote_ident(entry.table_name)}"
        if self._duck is not None:
            cursor = self._duck.cursor()
            yield from cursor.sql(sql).to_arrow_reader(batch_rows)
            return
        assert self._engine is not None
        with self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(sa.text(sql))
            for part in result.mappings().partitions():
                yield pa.RecordBatch.from_pylist([dict(r) for r in part])


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in .*?\(PID (\d+)\)", re.DOTALL)


def lock_holder(exc: BaseException) -> str | None:
    """When DuckDB refused to open a file because another process holds its lock, that process's id
    ("" when DuckDB did not name it); None for any other failure. Only the id leaves this function: the
    message also quotes the file's path and the other program's."""
    text = str(exc)
    if "Conflicting lock" not in text:
        return None
    found = _LOCK_HOLDER.search(text)
    return found[1] if found else ""


def _io_problem(exc: duckdb.IOException) -> str:
    """Why a DuckDB store file cannot be opened for writing, for a message that names what to do."""
    pid = lock_holder(exc)
    if pid is None:
        return type(exc).__name__
    holder = f" PID {pid}" if pid else ""
    return (
        f"the store file is open in another process (a running `fedgate serve`?{holder}): "
        "a DuckDB store is written by one process at a time; stop the gateway to publish, or use a "
        "PostgreSQL store"
    )


def _transactional_ddl(engine: sa.Engine) -> None:
    """Run a SQLite store's DDL inside its transactions (SQLAlchemy's recipe for the pysqlite driver,
    "Serializable isolation / Savepoints / Transactional DDL").

    The driver itself begins a transaction only before an INSERT, UPDATE or DELETE, so a version table's
    CREATE TABLE, the first write of a publish, would be committed at once: a publish that failed after it
    (the audit log refusing its record, a value the store cannot hold) would leave the table behind with no
    catalog row, and the dataset's next ingest would fail on it. Here the driver begins nothing and every
    transaction starts with an explicit BEGIN, which SQLite's DDL honours."""

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _add_columns(conn: sa.Connection) -> None:
    """Give a catalog published before a column was added that column (NULL for its rows)."""
    held = {c["name"] for c in sa.inspect(conn).get_columns(CATALOG)}
    # Two ingests may open one old PostgreSQL store at once: the second must not fail on the first's column.
    guard = "IF NOT EXISTS " if conn.dialect.name == "postgresql" else ""
    for name in _ADDED_COLUMNS:
        if name not in held:
            conn.execute(sa.text(f"ALTER TABLE {CATALOG} ADD COLUMN {guard}{name} TEXT"))


def _with(entry: CatalogEntry, **changes: Any) -> CatalogEntry:
    data = {c: getattr(entry, c) for c in _CATALOG_COLUMNS}
    data.update(changes)
    return CatalogEntry(**data)


def _copy_postgres(
    conn: sa.Connection, table: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> None:
    raw = conn.connection.driver_connection
    assert raw is not None, "a live PostgreSQL connection"
    cols = ", ".join(quote_ident(f.name) for f in schema)
    with raw.cursor() as cur, cur.copy(f"COPY {quote_ident(table)} ({cols}) FROM STDIN (FORMAT csv)") as copy:
        for batch in batches:
            if not batch.num_rows:
                continue
            buf = io.BytesIO()
            pacsv.write_csv(pa.Table.from_batches([batch]), buf, pacsv.WriteOptions(include_header=False))
            copy.write(buf.getvalue())
