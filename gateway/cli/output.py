"""Shared CLI plumbing: one console per stream, the exit codes every command uses, how a command names and
checks the databases a site's settings locate, and how it opens the site's audit log and creates a key."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape

from audit.errors import AuditError
from audit.log import AuditLog
from connectors.errors import mask_credentials
from connectors.sql import shown_url
from gateway.settings import SiteSettings
from gateway.site_log import local_steward, open_site_log

console = Console()
errors = Console(stderr=True)

EXIT_FAILED = 1  # the work itself failed (a store, an engine, an integrity check)
EXIT_BAD_INPUT = 2  # config, spec, source data or arguments are wrong; the message says where
EXIT_RISK = 3  # the dataset's re-identification risk is above the spec's threshold
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT), as a shell reports it


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one error line to stderr and exit with `code`. The message is printed as it is: it may quote a
    policy's source line or a path, whose brackets are not console markup."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def shown(url: str) -> str:
    """A database URL for a message: no password, and `<unparsable URL>` for text that is no URL (which
    may be a password pasted in the wrong place)."""
    try:
        return mask_credentials(shown_url(url))
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable URL>"


def url_problem(url: str) -> str | None:
    """Why `url` cannot name a database here (not a URL, an unknown database, a driver that is not
    installed), or None. The reason never repeats the URL."""
    if url.startswith("duckdb:///"):
        return None
    try:
        sa.make_url(url).get_dialect().import_dbapi()
    except sa.exc.NoSuchModuleError:  # an ArgumentError too
        return "names a kind of database SQLAlchemy does not know"
    except (sa.exc.ArgumentError, ValueError):
        return "is not a database URL"
    except ImportError as exc:
        return f"needs a database driver that is not installed ({exc.name or type(exc).__name__})"
    return None


def database_file(url: str) -> Path | None:
    """The file an embedded database URL (`duckdb:///path`, `sqlite:///path`) names; None for a database
    server or one in memory. Opening such a URL creates the file, which a command that only reads must not."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() not in ("sqlite", "duckdb") or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database)


def open_log(settings: SiteSettings, cannot: str, *, signed: bool = True) -> AuditLog:
    """The site's audit log, or one error line that begins with `cannot` ("the audit log cannot record
    this ingest") and an exit: 2 when audit_url is no usable URL, 1 when the log cannot be opened.

    `signed=False` opens it without the log key, which appending does not need: a key created before the
    log key is recorded too."""
    url = settings.audit_url
    problem = url_problem(url)
    if problem is not None:
        fail(f"{cannot}: audit_url {shown(url)} {problem}")
    try:
        if signed:
            return open_site_log(settings)
        database = database_file(url)
        if database is not None:  # a fresh site has no var/ folder yet; SQLite creates the file only
            database.parent.mkdir(parents=True, exist_ok=True)
        return AuditLog.open(url, settings.audit_origin, None, checkpoint_interval_s=None)
    except AuditError as exc:
        fail(f"{cannot}: {exc}", EXIT_FAILED)
    except Exception as exc:  # noqa: BLE001 - a database that cannot be opened: one line, not a traceback
        fail(f"{cannot}: the audit log at {shown(url)} cannot be opened ({type(exc).__name__})", EXIT_FAILED)


Key = TypeVar("Key")


def create_audited_key(
    settings: SiteSettings,
    kind: str,
    path: Path,
    create: Callable[[], Key],
    fingerprint: Callable[[Key], str],
    refused: tuple[type[Exception], ...],
    name: str | None = None,
) -> Key:
    """Create the key file `path` with `create` (which raises one of `refused` to refuse) and record it in
    the audit log as `key.changed` with `kind` and its public `fingerprint` ('sha256:…'), never the key.

    The log is opened first, so no key is made that the log cannot record; a key whose record the log
    refuses is removed again, since nothing can have used it yet. The key's folder is created if missing."""
    if path.exists() or path.is_symlink():  # refused before the log is opened (or created) for nothing
        fail(f"{path}: a key file already exists; refusing to overwrite it")
    log = open_log(settings, "the audit log cannot record a new key, so none is created", signed=False)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"{path.parent}: cannot create the key folder: {exc.strerror}")
        try:
            key = create()
        except refused as exc:
            fail(str(exc))
        payload = {"key": kind, "action": "created", "fingerprint": fingerprint(key)}
        if name is not None:
            payload["name"] = name
        try:
            log.append("key.changed", actor=local_steward(settings), payload=payload)
        except AuditError as exc:
            path.unlink(missing_ok=True)
            fail(f"the audit log refused to record the new key, so {path} was removed: {exc}", EXIT_FAILED)
    finally:
        log.close()
    return key


def sha256_fingerprint(data: bytes) -> str:
    """'sha256:' and the hex SHA-256 of `data` (a public key, or a key id)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
