"""Ingest: stream a source through its spec into a staging table, measure risk, digest, publish atomically.

Raw values exist only in the record batches streaming through DuckDB; what is written, even to the
staging table, is already pseudonymized. Any failure drops the staging table, so the store keeps its last
published version.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from connectors.base import Connector
from connectors.errors import ConnectorError
from pseudonymize.digest import ContentDigest
from pseudonymize.errors import IngestError, RiskThresholdError
from pseudonymize.generalize import quote_ident, suppress_rare_prefixes_sql
from pseudonymize.keys import SecretKey
from pseudonymize.risk import RiskReport, k_anonymity
from pseudonymize.spec import PseudonymizationSpec
from pseudonymize.store import CatalogEntry, Store, now_utc
from pseudonymize.transform import VALUE_ERROR_MARK, compile_transform

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class IngestResult:
    """What an ingest published: the catalog entry (with its risk report)."""

    entry: CatalogEntry

    @property
    def risk(self) -> RiskReport:
        """The k-anonymity report stored with the dataset."""
        r = dict(self.entry.risk_report)
        r.pop("passes", None)
        return RiskReport(**r)


class _Stream:
    """Wraps a connector's batches so progress is reported and a connector error survives DuckDB."""

    def __init__(self, connector: Connector, schema: pa.Schema, on_rows: ProgressCallback | None) -> None:
        self.connector = connector
        self.schema = schema
        self.on_rows = on_rows
        self.error: ConnectorError | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self.connector.batches():
                yield batch
                if self.on_rows is not None:
                    self.on_rows(batch.num_rows)
        except ConnectorError as exc:
            self.error = exc
            raise

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.schema, self.batches())


def derive_pseudonym_key(key: SecretKey, key_context: str) -> bytes:
    """The HMAC key for one agreement or project, derived from the master (or a shared linkage) key."""
    return key.derive("pseudonym", key_context)


def pseudonym_key(master: SecretKey, spec: PseudonymizationSpec, linkage: SecretKey | None = None) -> bytes:
    """The HMAC key of a dataset: from the site master key, or a shared linkage key an agreement grants."""
    return derive_pseudonym_key(linkage or master, spec.key_context)


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
) -> IngestResult:
    """Pseudonymize a source and publish it as the dataset's next version.

    Raises SpecError (spec vs source), ConnectorError (source), RiskThresholdError (k below threshold
    without override) or IngestError; in every case nothing is published.
    """
    key = pseudonym_key(master, spec, linkage_key)
    schema = connector.schema()
    compiled = compile_transform(spec, schema, key, spec_path)
    staging = f"staging_{spec.dataset}_{uuid.uuid4().hex[:12]}"

    workdir: Path | None = None
    if store.is_duckdb:
        con = store.duckdb.cursor()
    else:
        # Other stores receive finished rows; the transform itself runs in a private DuckDB file.
        workdir = Path(tempfile.mkdtemp(prefix="fedgate-ingest-"))
        con = duckdb.connect(str(workdir / "work.duckdb"))
    stream = _Stream(connector, schema, on_rows)
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
        for column, min_count in compiled.rare_prefix_rules:
            con.execute(suppress_rare_prefixes_sql(staging, column, min_count)).fetchall()

        patient_column = spec.output_column(spec.patient_key) if spec.patient_key else None
        risk = k_anonymity(
            con, staging, spec.quasi_identifiers, spec.k_anonymity.k, patient_column=patient_column
        )
        if not risk.passes and not override_k:
            raise RiskThresholdError(risk)

        out_schema = con.sql(f"SELECT * FROM {quote_ident(staging)} LIMIT 0").to_arrow_table().schema
        digest = ContentDigest(out_schema)
        for batch in con.sql(f"SELECT * FROM {quote_ident(staging)}").to_arrow_reader(256_000):
            digest.update(batch)
        entry = CatalogEntry(
            dataset=spec.dataset,
            version=0,
            table_name="",
            published_at=now_utc(),
            row_count=digest.rows,
            columns=[{"name": f.name, "type": str(f.type)} for f in out_schema],
            content_digest=digest.hexdigest(),
            spec_digest=spec.digest,
            key_id=(linkage_key or master).key_id,
            key_context=spec.key_context,
            duo=list(spec.duo),
            jurisdiction=jurisdiction,
            risk_report=risk.to_dict(),
            source=connector.source,
            k_override=override_k and not risk.passes,
            patient_column=patient_column,
        )
        if store.is_duckdb:
            published = store.publish_duckdb_table(staging, entry)
        else:
            reader = con.sql(f"SELECT * FROM {quote_ident(staging)}").to_arrow_reader(100_000)
            published = store.publish_batches(out_schema, iter(reader), entry)
        return IngestResult(published)
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(staging)}").fetchall()
        con.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
