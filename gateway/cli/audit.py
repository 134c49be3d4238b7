"""`fedgate audit …`: create the log key, export a site's log and verify an export offline.

Exit codes of `fedgate audit verify` (also in docs/audit.md and its --help): 0 every check holds; 1 the log
is not intact (the message names the first bad entry or signature); 2 bad usage or an unusable key or
config; 3 the log is intact but fewer known witnesses cosigned than --min-witnesses; 4 a file cannot be
read; 5 the log is intact but a release was not allowed by its decision (--releases).

`fedgate audit export` exits 0 when the export is written; 1 when the audit log cannot be opened or read;
2 for bad usage or config (an --out that exists without --force, or that is one of the site's own files;
an audit log that does not exist); 4 when --out cannot be written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import IO, Annotated, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from audit import export_format
from audit.checkpoint import parse_checkpoint_body
from audit.errors import AuditError, AuditIntegrityError, LogKeyError, NoteError
from audit.keys import generate_log_key, load_log_key
from audit.log import AuditLog
from audit.notes import ALG_COSIGNATURE_V1, ALG_ED25519, parse_note, parse_verifier_key, verifier_key_text
from audit.report import DEFAULT_MIN_COUNT, PERIODS, TransparencyReport, transparency_report
from audit.verify import check_releases, verify_export
from audit.verify.reader import export_checkpoint
from gateway.auth.dev import dev_key_path
from gateway.cli.output import database_file, shown, url_problem
from gateway.federation.witnessing import witness_store_url
from gateway.settings import ConfigError, SiteSettings, load_settings

app = typer.Typer(help="Export and verify the tamper-evident audit log.", no_args_is_help=True)

EXIT_OK = 0
EXIT_NOT_INTACT = 1
EXIT_FAILED = 1  # export: the audit log cannot be opened or read
EXIT_USAGE = 2
EXIT_TOO_FEW_WITNESSES = 3
EXIT_UNREADABLE = 4
EXIT_RELEASE_NOT_ALLOWED = 5
# Below this many entries verification is quick enough that a progress bar is only noise.
PROGRESS_MIN_ENTRIES = 100_000

_err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # messages quote paths and sources
_out = Console(highlight=False, soft_wrap=True, markup=False)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")]


def _settings(config: Path) -> SiteSettings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _err.print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None


_KEY_KINDS = {
    ALG_ED25519: "a log's Ed25519 verifier key (type 0x01, printed by `fedgate audit keygen`)",
    ALG_COSIGNATURE_V1: (
        "a witness's cosignature/v1 verifier key (type 0x04, printed by `fedgate witness keygen`)"
    ),
}


def _key_text(value: str, what: str, alg: int) -> str:
    """A verifier key of type `alg` given inline or as the path of a file holding it."""
    path = Path(value)
    text = value
    if "+" not in value or path.is_file():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            # Not the value: a secret key pasted where a verifier key or its file belongs must not be echoed.
            _err.print(
                f"error: cannot read {what}: {exc.strerror} (give a verifier key name+hash+key, or its file)"
            )
            raise typer.Exit(EXIT_USAGE) from None
    try:
        parsed = parse_verifier_key(text)
    except NoteError as exc:
        _err.print(f"error: {what} is not a valid verifier key: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    if parsed.alg != alg:
        # Else a log key given as a witness would verify no cosignature and be passed over in silence.
        _err.print(
            f"error: {what} {parsed.name}+{parsed.key_id.hex()} is {_KEY_KINDS[parsed.alg]}; {what} takes "
            f"{_KEY_KINDS[alg]}"
        )
        raise typer.Exit(EXIT_USAGE)
    return text


@app.command("keygen")
def keygen(config: ConfigOpt) -> None:
    """Create the site's Ed25519 log key at log_key_file (0600; its folder too) and print its verifier key."""
    settings = _settings(config)
    try:
        settings.log_key_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _err.print(f"error: {settings.log_key_file.parent}: cannot create the key folder: {exc.strerror}")
        raise typer.Exit(EXIT_USAGE) from None
    try:
        key = generate_log_key(settings.log_key_file)
    except LogKeyError as exc:
        _err.print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    _err.print(f"created {settings.log_key_file}; give auditors and witnesses this verifier key:")
    _out.print(verifier_key_text(settings.audit_origin, key.public_key()), soft_wrap=True)


@app.command("export")
def export(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", help="file to write the export to")],
    checkpoint: Annotated[
        bool, typer.Option("--checkpoint/--no-checkpoint", help="sign a checkpoint of the whole log first")
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", help="replace --out if it exists (never one of the site's own files)")
    ] = False,
) -> None:
    """Write every entry, the latest signed checkpoint and its cosignatures to --out.

    The export is written beside --out and renamed onto it only once whole:
    a failed or stopped export leaves --out as it was.
    An existing --out is replaced only with --force, and never the site's config,
    key files, or the files of its audit log, state or store.

    Exit codes:
    0 written;
    1 the audit log cannot be opened or read;
    2 bad usage or config, or an audit log that does not exist;
    4 --out cannot be written.
    """
    settings = _settings(config)
    own = _site_file(config, settings, out)
    if own is not None:
        _err.print(f"error: refusing to write the export to {out}: it is {own}")
        raise typer.Exit(EXIT_USAGE)
    if not force and (out.exists() or out.is_symlink()):
        _err.print(f"error: {out} exists; give --force to replace it")
        raise typer.Exit(EXIT_USAGE)
    problem = url_problem(settings.audit_url)
    if problem is not None:
        _err.print(f"error: audit_url {shown(settings.audit_url)} {problem}")
        raise typer.Exit(EXIT_USAGE)
    database = database_file(settings.audit_url)
    if database is not None and not database.is_file():
        # Opening it would create an empty log, and export that as if the site had recorded nothing.
        _err.print(f"error: the audit log {database} does not exist (audit_url); nothing to export")
        raise typer.Exit(EXIT_USAGE)
    try:
        key = load_log_key(settings.log_key_file)
        with (
            _terminated_as_exit(),
            AuditLog.open(settings.audit_url, settings.audit_origin, key, checkpoint_interval_s=None) as log,
        ):
            if checkpoint:
                log.checkpoint()
            cp = log.export(out, replace=force)
    except FileExistsError:
        _err.print(f"error: {out} exists; give --force to replace it")
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as exc:
        _err.print(f"error: cannot write {out}: {exc.strerror}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    except AuditError as exc:
        _err.print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as exc:  # noqa: BLE001 - a database that cannot be opened or read: one line
        where = shown(settings.audit_url)
        _err.print(f"error: the audit log at {where} cannot be opened or read ({type(exc).__name__})")
        raise typer.Exit(EXIT_FAILED) from None
    _out.print(f"exported {cp.size} entries of {cp.origin} (root {cp.root.hex()}) to {out}")


def _site_file(config: Path, settings: SiteSettings, out: Path) -> str | None:
    """What `out` is when it is one of the site's own files (links followed), else None: an export written
    there would destroy a key, the audit log it exports, or the state and store the gateway runs on."""
    files: list[tuple[Path, str]] = [(config, "the site's config file")]
    keys = (
        ("master_key_file", settings.master_key_file), ("log_key_file", settings.log_key_file),
        ("peer_key_file", settings.peer_key_file), ("witness_key_file", settings.witness_key_file),
    )  # fmt: skip
    files += [(path, f"the {name}") for name, path in keys if path is not None]
    files.append((dev_key_path(settings), "the dev token issuer's key"))
    databases = [("audit_url", settings.audit_url), ("state_url", settings.state_url),
                 ("store_url", settings.store_url)]  # fmt: skip
    with contextlib.suppress(sa.exc.ArgumentError, ValueError):  # no witness store beside a state_url no URL
        databases.append(("the witness store", witness_store_url(settings)))
    for name, url in databases:
        database = database_file(url)
        if database is None:
            continue
        what = f"the database of {name}" if name.endswith("_url") else name
        # SQLite's and DuckDB's journals, and the log writers' lock, belong to the database too.
        for suffix in ("", "-wal", "-shm", "-journal", "-writer.lock", ".wal"):
            files.append((database.with_name(database.name + suffix), what))
    target = out.resolve()
    try:
        found = out.stat()
    except OSError:
        found = None
    for path, what in files:
        if path.resolve() == target:
            return what
        if found is not None:  # a hard link to it
            try:
                if os.path.samestat(found, path.stat()):
                    return what
            except OSError:
                continue
    return None


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM ends the process as SystemExit(143), so that cleanups run: an export
    stopped so leaves no half-written file behind."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


ExportArg = Annotated[Path, typer.Argument(help="an export written by `fedgate audit export`")]
LogKeyOpt = Annotated[str, typer.Option("--key", help="the log's verifier key (text or a file)")]
WitnessOpt = Annotated[
    list[str] | None, typer.Option("--witness", help="a witness's verifier key (text or file); repeatable")
]
MinWitnessesOpt = Annotated[int, typer.Option("--min-witnesses", min=0, help="cosignatures required")]


@app.command("verify")
def verify(
    file: ExportArg,
    key: LogKeyOpt,
    witness: WitnessOpt = None,
    min_witnesses: MinWitnessesOpt = 0,
    since: Annotated[
        Path | None,
        typer.Option(
            "--since",
            help="a signed checkpoint kept earlier, or the earlier export itself: prove the log only grew",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=0, help="processes hashing entries (0: the idle cores, on large logs)"),
    ] = 0,
    releases: Annotated[
        bool,
        typer.Option(
            "--releases/--no-releases",
            help="also check that every release was allowed and every entry is canonical (a second pass)",
        ),
    ] = True,
) -> None:
    """Verify an export offline; exit 0 only when every check holds.

    Exit codes:
    0 every check holds;
    1 the log is not intact (the message names the first bad entry or signature);
    2 bad usage, an unusable key, or a --since file that is neither a checkpoint nor an export;
    3 the log is intact but fewer known witnesses cosigned than --min-witnesses;
    4 a file cannot be read;
    5 the log is intact but a release was not allowed by its decision (with --releases).
    """
    log_key = _key_text(key, "--key", ALG_ED25519)
    witness_keys = [_key_text(w, "--witness", ALG_COSIGNATURE_V1) for w in witness or []]
    kept = _kept_checkpoint(since) if since is not None else None
    with _verifying(file) as bar:
        summary = verify_export(
            file, log_key, witness_keys, min_witnesses, kept, progress=bar.tick, workers=workers
        )
        checked = check_releases(file) if releases else None
    _out.print(f"OK {summary.origin}: {summary.size} entries, root {summary.root.hex()}")
    _out.print(f"   checkpoint signed by {summary.log_key.split('+')[0]}")
    if summary.witnesses:
        _out.print(f"   cosigned by {len(summary.witnesses)} witness(es): {', '.join(summary.witnesses)}")
    for skipped in summary.skipped:
        _out.print(f"   not counted: {skipped}")
    if summary.since_size is not None:
        _out.print(f"   consistent with the kept checkpoint of size {summary.since_size} (the log only grew)")
    if checked is not None:
        _out.print(
            f"   every entry canonical; {checked.releases} release(s) and {checked.glm_sessions} GLM "
            f"session(s), each allowed by its decision; {checked.glm_iterations} GLM iteration(s) of opened "
            f"sessions"
        )


def _kept_checkpoint(since: Path) -> bytes:
    """The signed checkpoint `--since` names: a checkpoint note as kept, or the one ending an earlier export
    (the file `fedgate audit export` wrote, given as it is). Exits 2 when the file is neither and 4 when it
    cannot be read. Whether the note is the log's (its signature, its origin) is for `verify_export`: a
    kept checkpoint that fails there is a log not intact."""
    try:
        with since.open("rb") as f:
            stream: IO[bytes] = f if f.seekable() else io.BytesIO(f.read())  # a pipe: read once
            is_export = stream.read(len(export_format.MAGIC)) == export_format.MAGIC
            stream.seek(0)
            note = export_checkpoint(stream) if is_export else stream.read()
    except OSError as exc:
        _err.print(f"error: cannot read --since {since}: {exc.strerror or exc}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    except AuditIntegrityError as exc:
        _not_a_checkpoint(since, f"an audit export whose checkpoint cannot be read: {exc.message}")
    try:
        parse_checkpoint_body(parse_note(note).text)
    except NoteError as exc:
        if is_export:
            _not_a_checkpoint(since, f"an audit export whose checkpoint cannot be read: {exc}")
        _not_a_checkpoint(since, f"neither a signed checkpoint nor an audit export ({exc})")
    return note


def _not_a_checkpoint(since: Path, what: str) -> NoReturn:
    _err.print(
        f"error: --since {since} is {what}; give the checkpoint kept from an earlier export, or that export"
    )
    raise typer.Exit(EXIT_USAGE) from None


@contextmanager
def _verifying(file: Path) -> Iterator[_VerifyProgress]:
    """The progress bar of a verification of `file`, taken away at its end; a failed verification exits
    with its code (1 not intact, 3 too few witnesses, 4 unreadable, 5 a release not allowed)."""
    bar = _VerifyProgress()
    try:
        yield bar
    except AuditIntegrityError as exc:
        bar.stop()
        _report_failure(exc)
        code = {"witnesses": EXIT_TOO_FEW_WITNESSES, "release_not_allowed": EXIT_RELEASE_NOT_ALLOWED}
        raise typer.Exit(code.get(exc.reason, EXIT_NOT_INTACT)) from None
    except OSError as exc:
        bar.stop()
        _err.print(f"error: cannot read {file}: {exc.strerror}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    bar.stop()


class _VerifyProgress:
    """The bar of a verification, shown once an export holds `PROGRESS_MIN_ENTRIES` entries or more."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=_err, transient=True,
        )  # fmt: skip
        self.task: TaskID | None = None

    def tick(self, done: int, total: int) -> None:
        if total < PROGRESS_MIN_ENTRIES:
            return
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("verify", total=total)
        self.progress.update(self.task, completed=done)

    def stop(self) -> None:
        """Take the bar away; one never started is left alone (stopping it prints an empty line)."""
        if self.task is not None:
            self.progress.stop()


def _report_failure(exc: AuditIntegrityError) -> None:
    where = f" at entry {exc.index}" if exc.index is not None else ""
    _err.print(f"FAILED ({exc.reason}){where}: {exc.message}", markup=False)
    if exc.expected is not None:
        _err.print(f"   expected: {exc.expected}")
    if exc.found is not None:
        _err.print(f"   found:    {exc.found}")
    if exc.fork is not None:
        _err.print("   fork evidence — two signed checkpoints no consistency proof can join:")
        _err.print(exc.fork.first, markup=False)
        _err.print(exc.fork.second, markup=False)


@app.command("report")
def report(
    file: ExportArg,
    key: LogKeyOpt,
    witness: WitnessOpt = None,
    min_witnesses: MinWitnessesOpt = 0,
    period: Annotated[
        str, typer.Option("--period", help="what each part of the report covers: month, quarter or year")
    ] = "quarter",
    since: Annotated[
        str | None, typer.Option("--since", help="count from this UTC day on (YYYY-MM-DD, inclusive)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="count up to this UTC day (YYYY-MM-DD, inclusive)")
    ] = None,
    min_count: Annotated[
        int,
        typer.Option(
            "--min-count",
            min=2,
            help="hide every count below this (at least 2), and count together the agreements fewer "
            "researchers asked under",
        ),
    ] = DEFAULT_MIN_COUNT,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON document")] = False,
) -> None:
    """Verify an export as `verify` does, then print a public transparency report of it.

    Per month, quarter or year: the queries released, denied by policy, refused by disclosure control,
    rejected by a steward, refused at another stage, cancelled or pending, by agreement and kind; invalid
    and federated queries, GLM sessions, authentication failures, consent withdrawals, policy changes,
    datasets published, and how many organisations and researchers asked. Never a name, and no count
    from 1 to --min-count - 1 (shown as <5; null in --json): exact counts are the export's, for `verify`
    and whoever holds it. See docs/audit.md.

    Exit codes as `verify`'s: a report is printed only from an export that verifies.
    0 verified and reported;
    1 the log is not intact;
    2 bad usage, or an unusable key;
    3 the log is intact but fewer known witnesses cosigned than --min-witnesses;
    4 the export cannot be read;
    5 the log is intact but a release was not allowed by its decision.
    """
    log_key = _key_text(key, "--key", ALG_ED25519)
    witness_keys = [_key_text(w, "--witness", ALG_COSIGNATURE_V1) for w in witness or []]
    chosen = next((p for p in PERIODS if p == period), None)
    if chosen is None:
        _err.print(f"error: --period must be one of {', '.join(PERIODS)}, not {period!r}")
        raise typer.Exit(EXIT_USAGE)
    first, last = _report_day(since, "--since"), _report_day(until, "--until")
    if first is not None and last is not None and first > last:
        _err.print(f"error: --since {first} is after --until {last}")
        raise typer.Exit(EXIT_USAGE)
    with _verifying(file) as bar:
        made = transparency_report(
            file, log_key, witness_keys, min_witnesses, period=chosen, since=first, until=last,
            min_count=min_count, progress=bar.tick,
        )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(made.as_json(), indent=2))
        return
    _print_report(made)


def _report_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        _err.print(f"error: {option} must be a day YYYY-MM-DD, not {value!r}")
        raise typer.Exit(EXIT_USAGE) from None


_REPORT_COLUMNS = (
    ("released", "released"), ("denied_by_policy", "denied by policy"),
    ("refused_by_disclosure_control", "refused by disclosure control"), ("rejected", "rejected by a steward"),
    ("", "refused at another stage"), ("cancelled", "cancelled"), ("pending", "pending"),
)  # fmt: skip


def _print_report(made: TransparencyReport) -> None:
    """The report as tables, one per period (every cell plain text: labels are never read as markup)."""
    since = made.since.isoformat() if made.since else "the first entry"
    until = made.until.isoformat() if made.until else "the last entry"
    hidden = f"<{made.min_count}"
    _out.print(
        f"Transparency report of {made.origin}: {made.checkpoint_size} entries, root {made.root.hex()}, "
        f"verified; by {made.period}, from {since} to {until}"
    )
    if made.witnesses:
        _out.print(f"   cosigned by {len(made.witnesses)} witness(es): {', '.join(made.witnesses)}")
    _out.print(
        f"   counts from 1 to {made.min_count - 1} are shown as {hidden}, and the agreements fewer than "
        f"{made.min_count} researchers asked under are counted together; no totals are printed"
    )
    if not made.periods:
        _out.print("   no entries in that time")

    def cell(n: int | None) -> str:
        return hidden if n is None else str(n)

    for part in made.periods:
        table = Table(title=Text(f"{part['period']} ({part['from']} to {part['to']})"), title_justify="left")
        table.add_column(Text("queries: agreement, kind"))
        for _, heading in _REPORT_COLUMNS:
            table.add_column(Text(heading), justify="right")
        for group, suffix in (("queries", ""), ("peer_queries", " (via a peer)")):
            for dsa, kinds in part[group].items():
                for kind, counts in kinds.items():
                    cells = _report_cells(counts, cell)
                    table.add_row(Text(f"{dsa}, kind {kind}{suffix}"), *(Text(c) for c in cells))
        if not part["queries"] and not part["peer_queries"]:
            table.add_row(Text("none"), *(Text("0") for _ in _REPORT_COLUMNS))
        _out.print(table)
        other = Table(show_header=False, box=None, padding=(0, 1))
        other.add_column(Text(""))
        other.add_column(Text(""), justify="right")
        glm, consent, changes = part["glm"], part["consent_withdrawals"], part["policy_changes"]
        changed = ", ".join(f"{k.replace('_', ' ')} {cell(n)}" for k, n in changes.items() if n != 0)
        rows = [
            (f"federated queries of kind {label} coordinated here",
             ", ".join(f"{cell(fed[end])} {end}" for end in ("released", "refused", "pending")))
            for label, fed in part["federated_queries"].items()
        ]  # fmt: skip
        rows += [
            ("invalid queries (refused before they were read)", cell(part["invalid_queries"])),
            ("invalid federated queries (refused before any site was asked)",
             cell(part["invalid_federated_queries"])),
            ("GLM sessions opened / refused",
             f"{cell(glm['sessions_opened'])} / {cell(glm['sessions_refused'])}"),
            ("GLM iterations run / refused",
             f"{cell(glm['iterations'])} / {cell(glm['iterations_refused'])}"),
            ("authentication failures", cell(part["auth_failures"])),
            ("consent withdrawals recorded", f"{cell(consent['events'])} ({cell(consent['patients'])} "
             f"patients named, {cell(consent['new'])} new)"),
            ("policy changes", changed or "0"),
            ("datasets published", cell(part["datasets_published"])),
            ("organisations that asked", cell(part["organisations"])),
            ("researchers who asked", cell(part["researchers"])),
        ]  # fmt: skip
        for what, value in rows:
            other.add_row(Text(what), Text(value))
        _out.print(other)


def _report_cells(counts: dict[str, int | None], cell: Callable[[int | None], str]) -> list[str]:
    """One row's cells; the refusals at other stages share one, each stage named (`plan 2, limit <5`)."""
    other = [
        f"{name.removeprefix('refused_at_')} {cell(n)}"
        for name, n in counts.items()
        if name.startswith("refused_at_") and n != 0
    ]
    return [", ".join(other) or "0" if not key else cell(counts[key]) for key, _ in _REPORT_COLUMNS]
