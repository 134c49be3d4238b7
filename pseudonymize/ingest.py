"""Ingest: stream a source through its spec into a staging table, measure risk, digest, publish atomically.

Raw values exist only in the record batches streaming through DuckDB; what is written, even to the
staging table, is already pseudonymized. Any failure drops the staging table, so the store keeps its last
published version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import Connector
from connectors.csv import CsvConnector
from connectors.errors import ConnectorError
from pseudonymize.column_hmac import ColumnHmac, HashedColumn, offset_array, token_array
from pseudonymize.digest import ContentDigest, table_digest
from pseudonymize.errors import IngestError, RiskThresholdError, SpecError
from pseudonymize.generalize import quote_ident, suppress_rare_prefixes_sql
from pseudonymize.identifiers import (
    PATIENT_KEY_COPY,
    is_date_type,
    is_integer_type,
    is_text_type,
    patient_key_copies,
    sample_kept_columns,
)
from pseudonymize.keys import SecretKey
from pseudonymize.risk import RiskReport, k_anonymity
from pseudonymize.spec import PseudonymizationSpec
from pseudonymize.store import BeforeCommit, CatalogEntry, ConsentTerms, Store, now_utc
from pseudonymize.transform import VALUE_ERROR_MARK, HashedInput, compile_transform

ProgressCallback = Callable[[int], None]
#: rows per batch read from the source: whole DuckDB row groups (122,880 rows each), so the parallel insert
#: writes each batch's row groups compressed as it goes; with partial ones left over, the next checkpoint
#: compresses most of the table a second time
SOURCE_BATCH_ROWS = 2 * 122_880
#: rows per batch read back for the content digest: DuckDB exports larger batches to Arrow faster, and
#: two in flight at this size stay below the k-anonymity's memory peak
DIGEST_BATCH_ROWS = 500_000
#: threads hashing the columns of one batch while DuckDB exports the next
DIGEST_THREADS = 2
#: processes computing pseudonyms (one per core, at most four), and the rows read before they take work:
#: below it, starting them costs more than they save. They are spawned a batch earlier, so that they
#: load while the first batches are hashed inline rather than stall the stream once they take over.
HASH_WORKERS = min(os.cpu_count() or 1, 4)
HASH_WORKERS_AFTER_ROWS = 2 * SOURCE_BATCH_ROWS
#: source types a `keep` column stores unchanged, value for value, so the stream can digest it as it
#: writes it; every other type is digested from the stored table
_STORED_AS_GIVEN = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_boolean,
    pa.types.is_integer,
    pa.types.is_float64,
    pa.types.is_date32,
)


@dataclass(frozen=True)
class IngestResult:
    """What an ingest published: the catalog entry (with its risk report), and for every kept float
    column (by its stored name) how many of its values were NaN or infinite in the source and are stored
    as missing."""

    entry: CatalogEntry
    not_finite_as_missing: dict[str, int] = field(default_factory=dict)

    @property
    def risk(self) -> RiskReport:
        """The k-anonymity report stored with the dataset."""
        return RiskReport.from_dict(self.entry.risk_report)


def _kept_floats(spec: PseudonymizationSpec, schema: pa.Schema) -> dict[str, str]:
    """Source column -> stored column, for the `keep` columns of floats (dictionary-encoded or not)."""
    floats: dict[str, str] = {}
    for name, rule in spec.columns.items():
        if rule.action != "keep":
            continue
        kind = schema.field(name).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_float32(kind) or pa.types.is_float64(kind):
            floats[name] = rule.output or name
    return floats


def _not_finite_as_null(column: pa.Array) -> tuple[pa.Array, int]:
    """The column with every NaN and ±infinity made missing, and how many were. Other values keep their
    bits (-0.0)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    not_finite = pc.invert(pc.is_finite(column))  # null where the value is missing already
    count = pc.sum(not_finite).as_py() or 0
    if not count:
        return column, 0
    return pc.if_else(not_finite, pa.scalar(None, column.type), column), int(count)


class _Stream:
    """Wraps a connector's batches: stores the NaN and infinities of kept float columns as missing, adds
    the pseudonym columns hashed outside DuckDB, digests the columns DuckDB stores as given, reports
    progress, and keeps a connector's (or a worker's) error so it survives DuckDB."""

    def __init__(
        self,
        connector: Connector,
        schema: pa.Schema,
        hashed: list[HashedInput],
        hasher: ColumnHmac,
        on_rows: ProgressCallback | None,
        digested: dict[str, str],
        floats: dict[str, str],
        patient_key: str | None = None,
    ) -> None:
        self.connector = connector
        #: the source column whose every row must name a patient
        self.patient_key = patient_key
        self.hashed = hashed
        self.hasher = hasher
        self.on_rows = on_rows
        self.error: ConnectorError | IngestError | None = None
        self.columns = schema.names
        #: source column -> stored column, for the kept floats whose NaN and infinities become missing
        self.floats = floats
        #: stored column -> how many NaN and infinities the stream has made missing so far
        self.not_finite_counts = dict.fromkeys(floats.values(), 0)
        for name in floats:
            # Decoded, and nullable whatever the source declared: a NaN arrives as a missing value.
            kind = schema.field(name).type
            kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            at = schema.get_field_index(name)
            schema = schema.set(at, schema.field(name).with_type(kind).with_nullable(True))
        for h in hashed:
            if h.token is not None:
                schema = schema.append(pa.field(h.token, pa.uuid()))
            if h.offset is not None:
                schema = schema.append(pa.field(h.offset, pa.int32()))
        self.schema = schema
        #: stored column -> stream column, for the columns the stream digests as DuckDB receives them
        self.digested = digested
        self.digest = (
            ContentDigest(pa.schema([schema.field(c) for c in digested.values()]), threads=DIGEST_THREADS)
            if digested
            else None
        )

    def batches(self) -> Iterator[pa.RecordBatch]:
        pending: deque[tuple[pa.RecordBatch, list[Future[HashedColumn]]]] = deque()
        seen = 0
        try:
            for given in self.connector.batches_of(self.columns, SOURCE_BATCH_ROWS):
                batch = self._not_finite_as_missing(given)
                self._check_patient_keys(batch, seen)
                if self.hashed and seen >= HASH_WORKERS_AFTER_ROWS:
                    # Worker processes take a moment to start: small sources are hashed inline.
                    self._start_workers(self.hasher.start_workers)
                seen += batch.num_rows
                if self.hashed and seen >= HASH_WORKERS_AFTER_ROWS - SOURCE_BATCH_ROWS:
                    self._start_workers(self.hasher.spawn_workers)
                futures = [self.hasher.submit(batch.column(h.source), h.max_days) for h in self.hashed]
                pending.append((batch, futures))
                while len(pending) > 2 * self.hasher.workers:
                    yield self._finish(*pending.popleft())
            while pending:
                yield self._finish(*pending.popleft())
        except ConnectorError as exc:
            self.error = exc
            raise

    def _not_finite_as_missing(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with the NaN and infinities of kept floats as missing values, before anything reads
        it: DuckDB and PostgreSQL order NaN above every number, so a query would count "not measured" as a
        value, and an infinity is no measurement either (a summary or a quantile over it has no value)."""
        for name, stored in self.floats.items():
            at = batch.schema.get_field_index(name)
            column, count = _not_finite_as_null(batch.column(at))
            self.not_finite_counts[stored] += count
            batch = batch.set_column(at, self.schema.field(name), column)
        return batch

    def _check_patient_keys(self, batch: pa.RecordBatch, rows_before: int) -> None:
        """Refuse a row without a patient: blank keys would all get the one token (and date shift) of the
        empty text, merging unrelated rows into one patient, and a missing one would leave its dates
        unshifted as missing. The refusal names the column and the row, never a value."""
        if self.patient_key is None:
            return
        missing = _missing_keys(batch.column(self.patient_key))
        if missing is None:
            return
        row = rows_before + missing + 1
        self.error = IngestError(
            self.connector.source,
            f"the patient key column {self.patient_key!r} is empty in row {row} of the source (counted "
            f"from 1, a header line not counted); every row must name its patient: remove or complete "
            f"such rows",
        )
        raise self.error

    def _start_workers(self, start: Callable[[int], None]) -> None:
        try:
            start(HASH_WORKERS)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start fails the ingest closed
            raise self._failed(exc) from None

    def _finish(self, batch: pa.RecordBatch, futures: list[Future[HashedColumn]]) -> pa.RecordBatch:
        try:
            results = [f.result() for f in futures]
        except Exception as exc:  # noqa: BLE001 - whatever a worker raised, the ingest fails closed
            raise self._failed(exc) from None
        for h, result in zip(self.hashed, results, strict=True):
            source = batch.column(h.source)
            if h.token is not None:
                batch = batch.append_column(h.token, token_array(source, result))
            if h.offset is not None:
                batch = batch.append_column(h.offset, offset_array(source, result))
        if self.digest is not None:
            self.digest.update(batch.select(list(self.digested.values())))
        if self.on_rows is not None:
            self.on_rows(batch.num_rows)
        return batch

    def _failed(self, exc: Exception) -> IngestError:
        # The worker's message could quote a value: keep only its kind.
        self.error = IngestError(self.connector.source, f"pseudonymizing failed ({type(exc).__name__})")
        return self.error

    def close(self) -> None:
        if self.digest is not None:
            self.digest.close()

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.schema, self.batches())


def _stored_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Each stored column's DuckDB type name (UUID, VARCHAR, …)."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _check_token_types(
    con: duckdb.DuckDBPyConnection, table: str, spec: PseudonymizationSpec, source: str
) -> None:
    """Every pseudonym column must be stored as UUID values: withdrawals and the digest read them so.

    A DuckDB that read the Arrow UUID tokens as anything else (releases before 1.4 may) fails the ingest
    rather than publish tokens that later queries would compare wrongly."""
    wanted = [rule.output or name for name, rule in spec.columns.items() if rule.action == "pseudonym"]
    if not wanted:
        return
    stored = _stored_types(con, table)
    wrong = sorted(c for c in wanted if stored.get(c) != "UUID")
    if wrong:
        raise IngestError(
            source,
            f"the pseudonym column(s) {', '.join(wrong)} were stored as {stored.get(wrong[0])}, not UUID; "
            f"this DuckDB ({duckdb.__version__}) is older than fedgate needs (1.4 or later)",
        )


def _check_kept_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    spec: PseudonymizationSpec,
    source: str,
    key: bytes,
    patient_column: str | None,
) -> None:
    """Refuse kept columns whose values look like direct identifiers (`pseudonymize.identifiers`): a
    forgotten mark must not publish e-mail addresses or record numbers verbatim. Text and integer columns
    kept without an `identifier` mark are held to the patterns and to their distinct values, text columns
    marked `quasi` to the patterns (the k-anonymity report judges how rare their values are), and every
    kept text or integer column, whatever its mark, to the patient key in `patient_column`: a copy of the
    key is the key. Columns marked `none` were reviewed and are not scanned otherwise; the refusal names
    the column and the signal, never a value."""
    stored = _stored_types(con, table)
    kept = {
        rule.output or name: (name, rule.identifier)
        for name, rule in spec.columns.items()
        if rule.action == "keep"
    }
    binary = [out for out in kept if stored.get(out) == "BLOB"]
    text = [out for out, (_, mark) in kept.items() if mark != "none" and is_text_type(stored.get(out, ""))]
    integers = [
        out for out, (_, mark) in kept.items() if mark is None and is_integer_type(stored.get(out, ""))
    ]
    quasi = [out for out, (_, mark) in kept.items() if mark == "quasi"]
    samples = sample_kept_columns(con, table, text, integers, binary=binary, patterns_only=quasi)
    signals = {s.column: s.signal for s in samples if s.signal}
    if patient_column is not None:
        comparable = [out for out in kept if is_text_type(stored[out]) or is_integer_type(stored[out])]
        for out in patient_key_copies(con, table, comparable, patient_column, key, binary=binary):
            signals[out] = PATIENT_KEY_COPY
    found = [(name, signals[out]) for out, (name, _) in kept.items() if out in signals]  # the spec's order
    if not found:
        return
    named = "; ".join(f"columns.{name} ({signal})" for name, signal in found)
    raise IngestError(
        source,
        f"kept as they are, but looking like a direct identifier: {named}. A direct identifier is never "
        f'published as it is: mark such a column identifier = "direct" and pseudonymize or drop it, or, '
        f'once reviewed as no identifier, identifier = "none"',
    )


def _check_kept_dates(
    con: duckdb.DuckDBPyConnection, table: str, spec: PseudonymizationSpec, source: str
) -> None:
    """Refuse a date or instant the spec keeps as it is, unless it is marked as no patient's date
    (`identifier: none`). Beside shifted dates it gives every patient's shift back (an admission kept, the
    discharge shifted: their difference is the shift, give or take the stay); alone it is a patient's date
    that no scan reads. A spec that shifts no date may mark it `quasi` instead, for the k-anonymity report
    to measure."""
    stored = _stored_types(con, table)
    shifts = [name for name, rule in spec.columns.items() if rule.action == "date_shift"]
    allowed = ("none",) if shifts else ("none", "quasi")
    refused = [
        name
        for name, rule in spec.columns.items()
        if rule.action == "keep"
        and rule.identifier not in allowed
        and is_date_type(stored.get(rule.output or name, ""))
    ]
    if not refused:
        return
    named = ", ".join(f"columns.{name}" for name in refused)
    if shifts:
        shifted = ", ".join(f"columns.{name}" for name in shifts)
        why = f"kept as they are beside the dates the spec shifts ({shifted}), they give the shifts back"
        quasi = ""
    else:
        why = "kept as they are, they are patients' dates that neither the scan nor the risk report reads"
        quasi = ', or mark one the k-anonymity report is to measure identifier = "quasi"'
    raise IngestError(
        source,
        f"dates {named}: {why}. Shift them (date_shift) or generalize them; mark a date that is no "
        f'patient\'s (a reference or extraction date) identifier = "none"{quasi}',
    )


def _digested_in_stream(
    spec: PseudonymizationSpec, schema: pa.Schema, hashed: list[HashedInput]
) -> dict[str, str]:
    """Stored columns whose values are a stream column's as given: tokens, and kept columns of plain types."""
    tokens = {h.source: h.token for h in hashed if h.token is not None}
    digested: dict[str, str] = {}
    for name, rule in spec.columns.items():
        out = rule.output or name
        if rule.action == "pseudonym" and name in tokens:
            digested[out] = tokens[name]
        elif rule.action == "keep" and any(is_type(schema.field(name).type) for is_type in _STORED_AS_GIVEN):
            digested[out] = name
    return digested


def _stored_as_given(given: pa.DataType, stored: pa.DataType) -> bool:
    """True when the stored column reads back as the values the stream digested (strings may widen)."""
    if pa.types.is_string(given) or pa.types.is_large_string(given):
        return bool(pa.types.is_string(stored) or pa.types.is_large_string(stored))
    return bool(given == stored)


def derive_pseudonym_key(key: SecretKey, key_context: str) -> bytes:
    """The HMAC key for one agreement or project, derived from the master (or a shared linkage) key."""
    return key.derive("pseudonym", key_context)


def pseudonym_key(master: SecretKey, spec: PseudonymizationSpec, linkage: SecretKey | None = None) -> bytes:
    """The HMAC key of a dataset: from the site master key, or a shared linkage key an agreement grants."""
    return derive_pseudonym_key(linkage or master, spec.key_context)


def _digest_stored(
    cursor: duckdb.DuckDBPyConnection, table: str, stored: pa.Schema, stream: _Stream
) -> dict[str, bytes]:
    """Every stored column's digest: from the stream where it hashed the stored values, else read back."""
    given = stream.digest.column_digests() if stream.digest is not None else {}
    digests = {
        out: given[col]
        for out, col in stream.digested.items()
        if _stored_as_given(stream.schema.field(col).type, stored.field(out).type)
    }
    rest = [f for f in stored if f.name not in digests]
    if rest:
        cols = ", ".join(quote_ident(f.name) for f in rest)
        with ContentDigest(pa.schema(rest), threads=DIGEST_THREADS) as digest:
            for batch in cursor.sql(f"SELECT {cols} FROM {quote_ident(table)}").to_arrow_reader(
                DIGEST_BATCH_ROWS
            ):
                digest.update(batch)
            digests.update(digest.column_digests())
    return digests


def ingest(
    connector: Connector,
    spec: PseudonymizationSpec,
    spec_path: str,
    master: SecretKey,
    store: Store,
    *,
    jurisdiction: str,
    override_k: bool = False,
    linkage_key: SecretKey | None = None,
    on_rows: ProgressCallback | None = None,
    rekey: bool = False,
    before_publish: BeforeCommit | None = None,
) -> IngestResult:
    """Pseudonymize a source and publish it as the dataset's next version. A dataset keeps its key: an
    ingest under another master key or agreement than its latest version is refused unless `rekey`.
    `before_publish` hears the version as it will be published, inside the store's transaction (to record
    it first): should it raise, nothing is published.

    Raises SpecError (spec vs source), ConnectorError (source), RiskThresholdError (k below threshold
    without override) or IngestError; in every case nothing is published.
    """
    key = pseudonym_key(master, spec, linkage_key)
    latest = store.latest(spec.dataset)
    key_id = (linkage_key or master).key_id
    if latest is not None and (latest.key_id, latest.key_context) != (key_id, spec.key_context) and not rekey:
        # Another key makes other tokens: every withdrawal recorded against the dataset's tokens would
        # match nothing in the new version, and its patients could no longer be followed across versions.
        raise IngestError(
            connector.source,
            f"v{latest.version} of {spec.dataset} was pseudonymized with key {latest.key_id} for "
            f"{latest.key_context!r}, this ingest would use key {key_id} for {spec.key_context!r}: its "
            f"tokens would differ, and consent withdrawals recorded against the old ones would no longer "
            f"match. Use the same master key and agreement, or re-key on purpose (--rekey)",
        )
    if isinstance(connector, CsvConnector):
        connector.declare_text(spec.text_columns)
        connector.declare_names(spec.columns)
    schema = connector.schema()
    for name in spec.text_columns:
        kind = schema.field(name).type if name in schema.names else None
        if kind is not None and not _identifier_type(kind):
            raise SpecError(spec_path, f"columns.{name}", f"an identifier is a single value, not a {kind}")
    compiled = compile_transform(spec, schema, key, spec_path)
    staging = f"staging_{spec.dataset}_{uuid.uuid4().hex[:12]}"

    workdir: Path | None = None
    if store.is_duckdb:
        con = store.duckdb.cursor()
    else:
        # Other stores receive finished rows; the transform itself runs in a private DuckDB file.
        workdir = Path(tempfile.mkdtemp(prefix="fedgate-ingest-"))
        con = duckdb.connect(str(workdir / "work.duckdb"))
    # Dates are taken from timestamps in UTC, whatever the machine's zone: a shift must not depend on it.
    con.execute("SET TimeZone = 'UTC'").fetchall()
    hasher = ColumnHmac(key)
    # Columns the spec drops and nothing reads are not read at all (a Parquet source skips them).
    read = pa.schema([f for f in schema if f.name in compiled.input_columns])
    digested = _digested_in_stream(spec, schema, compiled.hashed_inputs)
    floats = _kept_floats(spec, schema)
    stream = _Stream(
        connector, read, compiled.hashed_inputs, hasher, on_rows, digested, floats, spec.patient_key
    )
    try:
        con.register("source", stream.reader())
        try:
            con.execute(
                f"CREATE TABLE {quote_ident(staging)} AS {compiled.select_sql}", compiled.parameters
            ).fetchall()
        except duckdb.Error as exc:
            if stream.error is not None:
                raise stream.error from None
            # DuckDB messages can quote source values: pass on only the messages the transform wrote itself.
            text = str(exc)
            if VALUE_ERROR_MARK in text:
                detail = text[text.index(VALUE_ERROR_MARK) + len(VALUE_ERROR_MARK) :].strip()
                raise IngestError(connector.source, detail) from None
            raise IngestError(connector.source, f"pseudonymizing failed ({type(exc).__name__})") from None
        finally:
            con.unregister("source")
            hasher.close()
            stream.close()
        patient_column = spec.output_column(spec.patient_key) if spec.patient_key else None
        # A dropped patient key leaves the report its tokens in a staging column of their own, which
        # nothing but the report (and the steps before it) reads: the digest and the catalog see the
        # published columns only.
        risk_patients = patient_column or compiled.risk_patient_column
        for column, min_count in compiled.rare_prefix_rules:
            # A prefix is rare by its patients: one patient's 300 lab results are still one person.
            sql = suppress_rare_prefixes_sql(staging, column, min_count, patient_column=risk_patients)
            con.execute(sql).fetchall()
        _check_token_types(con, staging, spec, connector.source)
        _check_kept_dates(con, staging, spec, connector.source)
        _check_kept_columns(con, staging, spec, connector.source, key, risk_patients)

        published_columns = "*"
        if compiled.risk_patient_column is not None:
            published_columns = f"* EXCLUDE ({quote_ident(compiled.risk_patient_column)})"
        # The risk report and the digest of the columns the stream did not digest read the finished table
        # side by side: each alone leaves a core idle part of the time (the report's sort, the hashing).
        risk_cursor = con.cursor()
        # The digest reads tokens as Arrow UUID values (their 16 bytes), not as DuckDB's text for them.
        digest_cursor = con.cursor()
        digest_cursor.execute("SET SESSION arrow_lossless_conversion = true").fetchall()
        try:
            with ThreadPoolExecutor(1, "fedgate-risk") as side:
                risk_future = side.submit(
                    k_anonymity,
                    risk_cursor,
                    staging,
                    spec.quasi_identifiers,
                    spec.k_anonymity.k,
                    patient_column=risk_patients,
                )
                out_schema = (
                    con.sql(f"SELECT {published_columns} FROM {quote_ident(staging)} LIMIT 0")
                    .to_arrow_table()
                    .schema
                )
                stored = digest_cursor.sql(
                    f"SELECT {published_columns} FROM {quote_ident(staging)} LIMIT 0"
                ).to_arrow_table()
                column_digests = _digest_stored(digest_cursor, staging, stored.schema, stream)
                content_digest = table_digest(stored.schema, column_digests)
                risk = risk_future.result()
            streamed = stream.digest.rows if stream.digest is not None else risk.records
            if streamed != risk.records:
                # The digest would mix rows the table does not hold: publish nothing.
                raise IngestError(
                    connector.source, f"the table holds {risk.records} of {streamed} rows streamed"
                )
        finally:
            risk_cursor.close()
            digest_cursor.close()
        if compiled.risk_patient_column is not None:
            # The spec publishes no patient column: the tokens leave the table before it is published.
            con.execute(
                f"ALTER TABLE {quote_ident(staging)} DROP COLUMN {quote_ident(compiled.risk_patient_column)}"
            ).fetchall()
        if not risk.measured and not override_k:
            # No class was measured: "every record in a class of k" would hold of a table of unique rows.
            raise IngestError(
                connector.source,
                f'no column of {spec.dataset} is marked identifier = "quasi", so its k-anonymity was not '
                f"measured. Mark the quasi-identifiers the spec keeps (ages, sex, postcodes, dates), or "
                f"publish without a measured risk on purpose with the override (--override-k)",
            )
        if not risk.passes and not override_k:
            raise RiskThresholdError(risk)
        entry = CatalogEntry(
            dataset=spec.dataset,
            version=0,
            table_name="",
            published_at=now_utc(),
            row_count=risk.records,
            columns=[{"name": f.name, "type": str(f.type)} for f in out_schema],
            content_digest=content_digest,
            spec_digest=spec.digest,
            key_id=(linkage_key or master).key_id,
            key_context=spec.key_context,
            duo=list(spec.duo),
            jurisdiction=jurisdiction,
            risk_report=risk.to_dict(),
            source=connector.source,
            k_override=override_k and not risk.passes,
            patient_column=patient_column,
            consent_terms=ConsentTerms(
                diseases=tuple(spec.diseases),
                geographic_area=None if spec.geographic_area is None else tuple(spec.geographic_area),
                moratorium_until=spec.moratorium_until,
                use_until=spec.use_until,
            ),
        )
        if store.is_duckdb:
            published = store.publish_duckdb_table(staging, entry, before_publish)
        else:
            reader = con.sql(f"SELECT * FROM {quote_ident(staging)}").to_arrow_reader(100_000)
            published = store.publish_batches(out_schema, iter(reader), entry, before_publish)
        return IngestResult(published, dict(stream.not_finite_counts))
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(staging)}").fetchall()
        con.close()
        hasher.close()
        stream.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _missing_keys(column: pa.Array) -> int | None:
    """The index of the first patient key that names no one (missing, NaN, empty or only whitespace),
    or None when every row names a patient."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    missing = pc.is_null(column, nan_is_null=True)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        missing = pc.or_kleene(missing, pc.equal(pc.binary_length(column), 0))
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        blank = pc.or_(pc.equal(pc.binary_length(column), 0), pc.utf8_is_space(column))
        missing = pc.or_kleene(missing, blank)
    first = pc.index(missing, True).as_py()
    return None if first < 0 else int(first)


def _identifier_type(kind: pa.DataType) -> bool:
    """Whether a column of this type holds single values the pseudonym function reads: not a list, a
    struct or a map, which would be hashed as their printed form."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return not pa.types.is_nested(kind)
