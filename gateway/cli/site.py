"""`fedgate keygen`, `fedgate ingest` and `fedgate catalog`: the steward's ingest path into the store."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from audit.errors import AuditError
from audit.events import LABEL, TEXT
from connectors import ConnectorError, open_source
from gateway.catalog import CatalogView
from gateway.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_RISK,
    console,
    create_audited_key,
    database_file,
    fail,
    open_log,
    sha256_fingerprint,
    shown,
    url_problem,
)
from gateway.keyring import create_master_key, load_master_key
from gateway.query.errors import ExecutionError
from gateway.query.execute import store_engine
from gateway.runtime import STORE_FAILURES
from gateway.settings import ConfigError, SiteSettings, load_settings
from gateway.site_log import local_steward
from pseudonymize.errors import KeyMaterialError, PseudonymizeError, RiskThresholdError, SpecError, StoreError
from pseudonymize.ingest import IngestResult
from pseudonymize.ingest import ingest as run_ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import CatalogEntry, Store, lock_holder

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")]


def _settings(config: Path) -> SiteSettings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail(str(exc))


def keygen(config: ConfigOption) -> None:
    """Create the site master key file named by the config (mode 0600; never overwrites).

    The new key is recorded in the site's audit log (`key.changed`, with the
    SHA-256 of its key id, never the key), which must therefore be usable first;
    the log key is not needed.
    """
    settings = _settings(config)
    path = settings.master_key_file
    if path is None:
        fail(f"the master key comes from ${settings.master_key_env}; generate one with a secrets manager")
    key = create_audited_key(
        settings, "master", path, lambda: create_master_key(settings),
        lambda k: sha256_fingerprint(k.key_id.encode()), (KeyMaterialError,),
    )  # fmt: skip
    console.print(
        f"master key written to {escape(str(path))} (key id {key.key_id})", highlight=False, soft_wrap=True
    )


def ingest(
    config: ConfigOption,
    dataset: Annotated[str, typer.Option(help="dataset id; must equal the spec's `dataset`")],
    spec: Annotated[Path, typer.Option(help="pseudonymization spec (YAML or TOML)")],
    source: Annotated[
        str, typer.Option(help="a .csv/.parquet/.ndjson file, an NDJSON folder, or a database URL")
    ],
    table: Annotated[str | None, typer.Option(help="table to read from a database URL")] = None,
    resource_type: Annotated[str | None, typer.Option(help="FHIR resource type of NDJSON input")] = None,
    override_k: Annotated[
        bool, typer.Option("--override-k", help="publish even when k-anonymity is below the spec's threshold")
    ] = False,
    linkage_key: Annotated[
        Path | None, typer.Option(help="shared linkage key file, when an agreement grants cross-site linkage")
    ] = None,
    rekey: Annotated[
        bool,
        typer.Option(
            "--rekey",
            help="publish under another master key or agreement than the dataset's latest version "
            "(refused while consent withdrawals are recorded against its tokens)",
        ),
    ] = False,
) -> None:
    """Pseudonymize a source into the site's store and publish it as the dataset's next version.

    Both outcomes are audited: `ingest.published` with the dataset digest, or `ingest.refused` with the
    reason. The audit log must be usable before any data is read.
    """
    settings = _settings(config)
    _check_store_url(settings)
    log = open_log(settings, "the audit log cannot record this ingest")
    actor = local_steward(settings)

    def refused(reason: str, exc: BaseException) -> None:
        # The reason as one line; should the log refuse its text (it takes no identifier-like strings), the
        # kind of failure alone. The steward still hears the whole error, with its own exit code.
        line = " ".join(reason.split())
        line = line if len(line) <= TEXT.max_len else line[: TEXT.max_len - 1] + "…"
        reasons = [line, f"{type(exc).__name__} (its text is not recorded)"]
        for text in reasons:
            try:
                payload = {"dataset": _label(dataset), "reasons": [text]}
                log.append("ingest.refused", actor=actor, payload=payload)
                return
            except AuditError:
                continue
        console.print("[yellow]warning:[/] the audit log did not record this refusal", highlight=False)

    recorded: list[CatalogEntry] = []

    def record_published(entry: CatalogEntry) -> None:
        # Inside the store's publishing transaction: a version the log did not take is never published.
        log.append(
            "ingest.published",
            actor=actor,
            payload={
                "dataset": f"{entry.dataset}/v{entry.version}",
                "dataset_digest": f"sha256:{entry.content_digest}",
                "rows": entry.row_count,
                "columns": len(entry.columns),
                "min_k": int(entry.risk_report.get("smallest_class", 0)),
                # Whether the steward published below the spec's k, and under which spec and key (its
                # fingerprint): what an auditor needs to find an overridden or re-keyed version.
                "k_threshold": int(entry.risk_report.get("k_threshold", 0)),
                "k_override": entry.k_override,
                "spec_digest": f"sha256:{entry.spec_digest}",
                "key_id": entry.key_id,
            },
        )
        recorded.append(entry)

    interrupted: list[bool] = []
    try:
        try:
            with _noting_interrupts(interrupted):
                result = _ingest(
                    settings, dataset, spec, source, table, resource_type, override_k, linkage_key, rekey,
                    record_published,
                )  # fmt: skip
        except AuditError:
            if interrupted:
                _interrupted(refused, recorded)
            raise  # the publication record failed: the store rolled the version back
        except (ConnectorError, PseudonymizeError) as exc:
            if interrupted:
                _interrupted(refused, recorded)
            refused(_after(recorded, _reason(exc)), exc)
            raise
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - whatever broke, the refusal is audited
            # Ctrl-C may reach here as KeyboardInterrupt or as what a library made of it (DuckDB: a
            # RuntimeError); the flag the handler set tells which.
            if interrupted or isinstance(exc, KeyboardInterrupt):
                _interrupted(refused, recorded)
            reason = _after(recorded, f"ingest failed ({type(exc).__name__}); nothing was published")
            refused(reason, exc)
            fail(reason, EXIT_FAILED)
    except RiskThresholdError as exc:
        _print_risk(exc.report.to_dict())
        fail(str(exc), EXIT_RISK)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILED)
    except (ConnectorError, PseudonymizeError) as exc:
        fail(str(exc))
    except AuditError as exc:
        fail(f"the audit log refused the ingest record: {exc}", EXIT_FAILED)
    finally:
        log.close()
    entry = result.entry
    console.print(
        f"[green]published[/] {escape(entry.dataset)} v{entry.version}: {entry.row_count:,} rows, "
        f"{len(entry.columns)} columns, digest {entry.content_digest[:16]}…, key {entry.key_id}"
    )
    not_finite = {column: n for column, n in result.not_finite_as_missing.items() if n}
    if not_finite:
        # Counts per column only: which rows held them is the data's, not the console's.
        counts = ", ".join(f"{column} {n:,}" for column, n in not_finite.items())
        console.print(f"NaN or infinite values stored as missing: {counts}", highlight=False, markup=False)
    _print_risk(entry.risk_report)
    if entry.k_override:
        console.print("[yellow]published with --override-k: k-anonymity is below the spec's threshold[/]")


@contextmanager
def _noting_interrupts(interrupted: list[bool]) -> Iterator[None]:
    """Note in `interrupted` a Ctrl-C (SIGINT) while the block runs, then raise KeyboardInterrupt as Python
    does: a library that turns it into an error of its own still leaves the note."""

    def note(signum: int, frame: object) -> None:
        interrupted.append(True)
        signal.default_int_handler(signum, frame)  # type: ignore[arg-type]

    try:
        previous = signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main thread: Python's own handling stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(refused: Callable[[str, BaseException], None], recorded: list[CatalogEntry]) -> None:
    """Audit an ingest stopped by Ctrl-C as refused ("interrupted") and exit 130, as a shell reports it."""
    refused(_after(recorded, "interrupted"), KeyboardInterrupt())
    fail(_after(recorded, "interrupted; nothing was published"), EXIT_INTERRUPTED)


def _check_store_url(settings: SiteSettings) -> None:
    """Exit 2 with one line when store_url cannot name a database (never repeating its password)."""
    problem = url_problem(settings.store_url)
    if problem is not None:
        fail(f"store_url {shown(settings.store_url)} {problem}")


def _reason(exc: ConnectorError | PseudonymizeError) -> str:
    """Why an ingest was refused, without the paths, values or key material its message may hold."""
    if isinstance(exc, PseudonymizeError):
        return exc.audit_reason
    where = "".join(
        f", {label} {value}"
        for label, value in (("line", exc.line), ("row", exc.row), ("column", exc.column))
        if value
    )
    return f"{type(exc).__name__}: {exc.reason}{where}"


def _ingest(
    settings: SiteSettings,
    dataset: str,
    spec: Path,
    source: str,
    table: str | None,
    resource_type: str | None,
    override_k: bool,
    linkage_key: Path | None,
    rekey: bool,
    before_publish: Callable[[CatalogEntry], None],
) -> IngestResult:
    parsed = load_spec(spec)
    if parsed.dataset != dataset:
        raise SpecError(spec, "dataset", f"the spec is for {parsed.dataset!r}, not --dataset {dataset!r}")
    if rekey:
        _check_no_withdrawals(settings, dataset, spec)
    master = load_master_key(settings)
    linkage = SecretKey.from_file(linkage_key) if linkage_key is not None else None
    options = {k: v for k, v in (("table", table), ("resource_type", resource_type)) if v is not None}
    connector = open_source(source, **options)
    with Store(settings.store_url) as store, _progress() as progress:
        if not rekey:
            latest = store.latest(dataset)
            parsed = parsed.continuing(latest.key_context if latest is not None else None)
        task = progress.add_task(f"ingest {dataset}", total=None)
        return run_ingest(
            connector,
            parsed,
            str(spec),
            master,
            store,
            jurisdiction=settings.jurisdiction,
            override_k=override_k,
            linkage_key=linkage,
            on_rows=lambda n: progress.advance(task, n),
            rekey=rekey,
            before_publish=before_publish,
        )


def _after(recorded: list[CatalogEntry], reason: str) -> str:
    """A refusal's reason, saying so when the publication had been recorded before the store gave up."""
    if not recorded:
        return reason
    entry = recorded[-1]
    return f"{reason} (v{entry.version} was recorded as published, but the store did not publish it)"


def _check_no_withdrawals(settings: SiteSettings, dataset: str, spec: Path) -> None:
    """Refuse a re-key while the dataset's latest version has withdrawals: they are tokens of its key, and
    would match nothing under another."""
    from gateway.state import GatewayState

    with Store(settings.store_url) as store:
        latest = store.latest(dataset)
    if latest is None:
        return
    state = GatewayState(settings.state_url)
    try:
        withdrawn = len(state.withdrawn(dataset, latest.key_context))
    finally:
        state.close()
    if withdrawn:
        raise SpecError(
            spec,
            None,
            f"{withdrawn} consent withdrawal(s) are recorded against {dataset}'s tokens; under another key "
            f"they would match nothing and the withdrawn patients would be queryable again. Re-keying is "
            f"refused",
        )


def _label(dataset: str) -> str:
    """The dataset id as the audit log's label takes it (a --dataset that is no label is recorded as such)."""
    return dataset if LABEL.check(dataset) is None else "invalid-dataset-id"


def catalog(
    config: ConfigOption,
    dataset: Annotated[str | None, typer.Option(help="only this dataset")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the published dataset versions with their digests and risk reports.

    The store is only read (a DuckDB file read-only, as the gateway reads it), so this works while a
    gateway serves the site."""
    settings = _settings(config)
    _check_store_url(settings)
    path = database_file(settings.store_url)
    if path is not None and not path.is_file():
        # Opening it would create an empty store, and list nothing as if the store were empty.
        fail(f"the store {path} does not exist (store_url); check the path, or publish with `fedgate ingest`")
    entries = [e for e in _read_catalog(settings.store_url) if dataset is None or e.dataset == dataset]
    if as_json:
        console.print_json(json.dumps([e.row() | _decoded(e) for e in entries]))
        return
    table = Table(title=f"catalog of {escape(settings.site_id)}")
    for col in ("dataset", "version", "rows", "columns", "k (min class)", "DUO", "digest", "published"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            escape(e.dataset),
            str(e.version),
            f"{e.row_count:,}",
            str(len(e.columns)),
            escape(f"{e.risk_report.get('smallest_class')} (k≥{e.risk_report.get('k_threshold')})"),
            escape(" ".join(e.duo)),
            e.content_digest[:16] + "…",
            escape(str(e.published_at)),
        )
    console.print(table)


def _read_catalog(store_url: str) -> list[CatalogEntry]:
    """Every published version, oldest first, read as the gateway reads them: a DuckDB file read-only
    (which any number of processes may hold), and nothing created or altered in the store."""
    engine = None
    try:
        engine = store_engine(store_url, hold_open=False)
        return CatalogView(engine).refresh()
    except (*STORE_FAILURES, StoreError, ExecutionError) as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        pid = lock_holder(cause)
        if pid is not None:  # an ingest in another process holds the DuckDB file to write it
            holder = f" PID {pid}" if pid else ""
            fail(
                f"cannot open the store at {shown(store_url)}: the store file is being written by another "
                f"process (a running `fedgate ingest`?{holder}); try again when it is done",
                EXIT_FAILED,
            )
        fail(f"cannot open the store at {shown(store_url)}: {type(cause).__name__}", EXIT_FAILED)
    finally:
        if engine is not None:
            engine.dispose()


def _decoded(entry: CatalogEntry) -> dict[str, object]:
    return {
        "columns": entry.columns,
        "duo": entry.duo,
        "risk_report": entry.risk_report,
        "consent_terms": entry.consent_terms.to_dict(),
    }


def _print_risk(report: dict[str, object]) -> None:
    table = Table(title="re-identification risk (k-anonymity)")
    table.add_column("quasi-identifiers")
    table.add_column("k threshold")
    table.add_column("smallest class")
    table.add_column("classes")
    table.add_column("records below k")
    table.add_column("verdict")
    qi = report.get("quasi_identifiers") or []
    share = float(report.get("share_below_k", 0.0))  # type: ignore[arg-type]
    table.add_row(
        escape(", ".join(str(q) for q in qi) if isinstance(qi, list) else str(qi)),  # column names
        escape(str(report.get("k_threshold"))),
        escape(str(report.get("smallest_class"))),
        escape(str(report.get("classes"))),
        escape(f"{report.get('records_below_k')} ({share:.2%})"),
        _verdict(report),
    )
    console.print(table)


def _verdict(report: dict[str, object]) -> str:
    """The report's verdict in colour (a report recorded before verdicts were: from `passes`)."""
    verdict = report.get("verdict") or ("passes" if report.get("passes") else "below threshold")
    colour = {"passes": "green", "not measured": "yellow"}.get(str(verdict), "red")
    return f"[{colour}]{escape(str(verdict))}[/]"


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
