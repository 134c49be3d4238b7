"""Tables in any SQLAlchemy database (PostgreSQL, SQLite, DuckDB, ...), streamed with server-side cursors."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from connectors.base import DEFAULT_BATCH_ROWS, Connector
from connectors.errors import (
    EmptySource,
    EncodingError,
    InvalidOption,
    MissingColumn,
    SourceNotFound,
    TypeParseError,
    mask_credentials,
)
from connectors.sql_types import (
    CONVERSION_ERRORS,
    ColumnMapping,
    column_array,
    first_unconvertible,
    map_column,
)
from connectors.utf8 import first_holding

_SECRET_QUERY_KEY = re.compile(r"(?i)pass|pwd|secret|token|key|credential|auth")


def parse_url(text: str | URL) -> URL:
    """The SQLAlchemy URL `text` names. `InvalidOption` for text that is none, and for a login holding a
    second `@` (a password with an `@` not written `%40`), which would leave the rest of the password
    in the host name, to be shown and sent to a name server. Messages never repeat the text."""
    if isinstance(text, URL):
        url = text
    else:
        try:
            url = sa.make_url(text)
        except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is no number, a bracket unclosed
            hint = "; write an '@' in a user name or password as %40" if text.count("@") > 1 else ""
            raise InvalidOption("<database URL>", f"not a valid SQLAlchemy database URL{hint}") from None
    if "@" in (url.host or ""):
        raise InvalidOption(
            "<database URL>",
            "the login part of the database URL holds more than one '@'; write an '@' in the password "
            "(or user name) as %40",
        )
    return url


def _masked_values(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return mask_credentials(value)
    return tuple(mask_credentials(v) for v in value)


def shown_url(url: URL | str) -> str:
    """A database URL for messages and records: its password hidden, and the value of any query parameter
    that may carry a secret (`?password=`, `?sslkey=`, `?token=`) too."""
    parsed = sa.make_url(url) if isinstance(url, str) else url
    # A value that is itself a connection string (`?odbc_connect=DRIVER=…;PWD=…`) has its secrets masked.
    query = {k: "***" if _SECRET_QUERY_KEY.search(k) else _masked_values(v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


# What a fetch raises when the driver (or SQLAlchemy's result processing) cannot read a value as its type.
_FETCH_ERRORS = (TypeError, ValueError, ArithmeticError, sa.exc.DataError)
# Rows fetched at a time when a failed fetch is read again to find its value.
_LOCATE_CHUNK_ROWS = 1024

# File databases that create a missing file on connect: reading must never leave an empty database behind.
_FILE_DIALECTS = frozenset({"sqlite", "duckdb"})


class SqlConnector(Connector):
    """One table (or view) of a database named by a SQLAlchemy URL; `columns` selects and orders columns.

    Types come from the reflected column types (see `connectors.sql_types`); DuckDB hands over Arrow
    batches itself. Rows stream in primary-key order when the table has one.
    """

    def __init__(
        self,
        url: str | URL,
        table: str,
        *,
        schema: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.url = parse_url(url)  # the text may hold a password, so an error does not repeat it
        self.table = table
        self.db_schema = schema
        self.columns = list(columns) if columns is not None else None
        qualified = f"{schema}.{table}" if schema else table
        self.source = f"{mask_credentials(shown_url(self.url))} table {qualified}"
        self._schema: pa.Schema | None = None
        self._mappings: list[ColumnMapping] = []
        self._order_by: list[str] = []

    def schema(self) -> pa.Schema:
        if self._schema is None:
            engine = self._engine()
            try:
                with self._connect(engine) as conn:
                    self._schema = self._inspect(conn)
            finally:
                engine.dispose()
        return self._schema

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        if batch_rows < 1:
            raise InvalidOption(self.source, "batch_rows must be at least 1")
        schema = self.schema()
        engine = self._engine()
        try:
            with self._connect(engine) as conn:
                if self.url.get_backend_name() == "duckdb":
                    stream = self._duckdb_batches(conn, schema, batch_rows)
                else:
                    stream = self._row_batches(engine, conn, schema, batch_rows)
                delivered = 0
                try:
                    for batch in stream:
                        self._check_text(batch, delivered)
                        delivered += batch.num_rows
                        yield batch
                finally:
                    # A reader stopped early closes its result before the connection: DuckDB refuses to
                    # roll back a connection whose result is still open.
                    stream.close()
                if delivered == 0:
                    raise EmptySource(self.source, "the table holds no rows")
        except sa.exc.DBAPIError as exc:
            # Only the error's kind: a driver message about a fetched row may quote the row.
            raise SourceNotFound(self.source, f"reading failed: {_error_kind(exc.orig)}") from None
        except duckdb.Error as exc:
            raise SourceNotFound(self.source, f"reading failed: {_error_kind(exc)}") from None
        finally:
            engine.dispose()

    def _check_text(self, batch: pa.RecordBatch, delivered: int) -> None:
        """Refuse a text value holding a NUL character: no store, policy input or audit entry carries one."""
        for index, field in enumerate(batch.schema):
            found = first_holding(batch.column(index), "\x00")
            if found is not None:
                raise EncodingError(
                    self.source,
                    "a text value holds a NUL character",
                    row=delivered + found + 1,
                    column=field.name,
                )

    def _engine(self) -> Engine:
        backend = self.url.get_backend_name()
        database = self.url.database or ""
        on_disk = (
            backend in _FILE_DIALECTS and database != "" and not database.startswith((":memory:", "file:"))
        )
        if on_disk and not Path(database).is_file():
            raise SourceNotFound(self.source, "the database file does not exist")
        try:
            return sa.create_engine(self.url, hide_parameters=True)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise InvalidOption(self.source, f"no usable SQLAlchemy dialect ({type(exc).__name__})") from None

    def _connect(self, engine: Engine) -> Connection:
        try:
            return engine.connect()
        except sa.exc.DBAPIError as exc:
            raise SourceNotFound(
                self.source, f"cannot connect to the database: {self._driver_message(exc.orig)}"
            ) from None
        except duckdb.Error as exc:
            raise SourceNotFound(
                self.source, f"cannot open the database: {self._driver_message(exc)}"
            ) from None

    def _driver_message(self, error: BaseException | None) -> str:
        """The driver's own first line about a connection or a table's layout (never SQLAlchemy's, which
        repeats the statement), with the URL's password and secret query values taken out."""
        text = str(error).strip().splitlines()
        line = text[0] if text else "no detail"
        secrets = [str(self.url.password or "")]
        for key, value in self.url.query.items():
            if _SECRET_QUERY_KEY.search(key):
                secrets.extend([value] if isinstance(value, str) else value)
        for secret in filter(None, secrets):
            line = line.replace(secret, "***")
        return f"{type(error).__name__}: {mask_credentials(line)}"

    def _inspect(self, conn: Connection) -> pa.Schema:
        try:
            return self._reflect(conn)
        except sa.exc.DBAPIError as exc:
            # A file that is no database, a table the login may not read: reflection reads no rows, so the
            # driver's line (the password taken out) says which.
            raise SourceNotFound(
                self.source, f"cannot read the table's columns: {self._driver_message(exc.orig)}"
            ) from None
        except duckdb.Error as exc:
            raise SourceNotFound(
                self.source, f"cannot read the table's columns: {self._driver_message(exc)}"
            ) from None

    def _reflect(self, conn: Connection) -> pa.Schema:
        if self.url.get_backend_name() == "duckdb":
            found = self._duckdb_schema(conn)
        else:
            if not sa.inspect(conn).has_table(self.table, schema=self.db_schema):
                raise SourceNotFound(self.source, "the table does not exist")
            table = sa.Table(self.table, sa.MetaData(), schema=self.db_schema, autoload_with=conn)
            self._mappings = [map_column(column) for column in table.columns]
            self._order_by = [column.name for column in table.primary_key.columns]
            found = pa.schema([pa.field(m.name, m.arrow_type) for m in self._mappings])
        if self.columns is None:
            return found
        for name in self.columns:
            if found.get_field_index(name) < 0:
                raise MissingColumn(self.source, "the table has no such column", column=name)
        by_name = {m.name: m for m in self._mappings}
        self._mappings = [by_name[name] for name in self.columns if name in by_name]
        return pa.schema([found.field(name) for name in self.columns])

    def _duckdb_schema(self, conn: Connection) -> pa.Schema:
        """DuckDB states Arrow types itself; duckdb-engine's reflection breaks on SQLAlchemy 2.1."""
        try:
            return _duckdb_relation(conn, self._quoted_table(conn), None).limit(0).to_arrow_table().schema
        except duckdb.CatalogException:
            raise SourceNotFound(self.source, "the table does not exist") from None

    def _quoted_table(self, conn: Connection) -> str:
        quote = conn.dialect.identifier_preparer
        table = quote.quote(self.table)
        return f"{quote.quote_schema(self.db_schema)}.{table}" if self.db_schema else table

    def _select(self, mappings: Sequence[ColumnMapping]) -> sa.Select[Any]:
        table = sa.table(self.table, schema=self.db_schema)
        query = sa.select(*[sa.column(m.name, m.select_type) for m in mappings]).select_from(table)
        return query.order_by(*[sa.column(name) for name in self._order_by])

    def _row_batches(
        self, engine: Engine, conn: Connection, schema: pa.Schema, batch_rows: int
    ) -> Generator[pa.RecordBatch]:
        # stream_results asks for a server-side cursor (PostgreSQL); yield_per bounds what each fetch holds.
        result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
            self._select(self._mappings)
        )
        delivered = 0
        partitions = result.partitions(batch_rows)
        try:
            while True:
                try:
                    rows = next(partitions)
                except StopIteration:
                    return
                except _FETCH_ERRORS as exc:
                    # The driver's conversion to its declared type (a DATE column holding no date, a
                    # PostgreSQL date 'infinity') failed; its message quotes the value, so only where it
                    # is is said: the rows are read again to find it.
                    raise self._unreadable(engine, exc, delivered, batch_rows) from None
                columns = list(zip(*rows, strict=True))
                arrays = [
                    self._array(values, m, delivered)
                    for values, m in zip(columns, self._mappings, strict=True)
                ]
                delivered += len(rows)
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        finally:
            result.close()

    def _unreadable(self, engine: Engine, exc: Exception, first: int, count: int) -> TypeParseError:
        """The error for a fetch of rows `first + 1` to `first + count` that failed, with the column and
        row that failed when reading them again finds them."""
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        kind = type(cause).__name__
        for mapping in self._mappings:
            try:
                index = self._first_unreadable(engine, mapping, first, count, _LOCATE_CHUNK_ROWS)
            except sa.exc.DBAPIError:
                break  # the source fails otherwise now; what is known is said
            if index is not None:
                return TypeParseError(
                    self.source,
                    f"value does not read as {mapping.arrow_type} ({kind})",
                    row=first + index + 1,
                    column=mapping.name,
                )
        return TypeParseError(
            self.source,
            f"a value does not read as its column's declared type ({kind}) in rows {first + 1} to "
            f"{first + count}",
        )

    def _first_unreadable(
        self, engine: Engine, mapping: ColumnMapping, first: int, count: int, chunk: int
    ) -> int | None:
        """Index (from `first`) of the first of `count` rows whose `mapping` column the driver cannot read,
        fetching `chunk` rows at a time and then the failing chunk row by row; None when all read."""
        query = self._select([mapping]).offset(first).limit(count)
        done = 0
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query)
            try:
                for rows in result.partitions(chunk):
                    done += len(rows)
            except _FETCH_ERRORS:
                if chunk == 1:
                    return done
                found = self._first_unreadable(engine, mapping, first + done, min(chunk, count - done), 1)
                return None if found is None else done + found
            finally:
                result.close()
        return None

    def _array(self, values: tuple[Any, ...], mapping: ColumnMapping, delivered: int) -> pa.Array:
        try:
            return column_array(values, mapping)
        except CONVERSION_ERRORS:
            index = first_unconvertible(values, mapping)
            row = None if index is None else delivered + index + 1
            raise TypeParseError(
                self.source, f"value does not convert to {mapping.arrow_type}", row=row, column=mapping.name
            ) from None

    def _duckdb_batches(
        self, conn: Connection, schema: pa.Schema, batch_rows: int
    ) -> Generator[pa.RecordBatch]:
        reader = _duckdb_relation(conn, self._quoted_table(conn), schema.names).to_arrow_reader(batch_rows)
        try:
            for batch in reader:
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)
        finally:
            reader.close()


def _duckdb_relation(conn: Connection, quoted_table: str, names: list[str] | None) -> Any:
    """A DuckDB relation over the table, read through the engine's own connection."""
    quote = conn.dialect.identifier_preparer.quote
    selected = "*" if names is None else ", ".join(quote(name) for name in names)
    duck = conn.connection.driver_connection
    assert duck is not None  # an open connection always has its driver connection
    # Identifiers are quoted by the dialect; the statement has no values in it.
    return duck.sql(f"SELECT {selected} FROM {quoted_table}")


def _error_kind(error: BaseException | None) -> str:
    """The driver error's class and SQLSTATE, which say what failed without quoting data."""
    state = getattr(error, "sqlstate", None)
    return f"{type(error).__name__}" + (f" (SQLSTATE {state})" if state else "")
