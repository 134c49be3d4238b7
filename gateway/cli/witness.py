"""`fedgate witness …`: create the key this gateway cosigns its peers' checkpoints with, and read the fork
evidence its witness kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.markup import escape

from audit.notes import parse_verifier_key, public_key_bytes
from gateway.cli.output import EXIT_FAILED, create_audited_key, errors, fail, sha256_fingerprint
from gateway.federation.witnessing import (
    WitnessKeyError,
    create_witness_key,
    kept_fork_evidence,
    witness_name,
)
from gateway.settings import ConfigError, load_settings

app = typer.Typer(help="Witness peers' audit logs (C2SP tlog-witness).", no_args_is_help=True)


@app.command("keygen")
def keygen(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")],
) -> None:
    """Create the witness key at witness_key_file (0600, never overwritten) and print its verifier key.

    Peers put the printed line in their `[\\[peers]] witness_key` for this site.
    The new key is recorded in the site's audit log (`key.changed`, with the
    SHA-256 of its public key), which must therefore be usable first.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    path = settings.witness_key_file
    if path is None:
        fail(
            f'{config}: witness_key_file is not set; add e.g. witness_key_file = "keys/witness.key" '
            "(a top-level setting: before the first [table])"
        )
    vkey = create_audited_key(
        settings, "witness", path, lambda: create_witness_key(settings),
        lambda text: sha256_fingerprint(public_key_bytes(parse_verifier_key(text).public_key)),
        (WitnessKeyError,), name=witness_name(settings),
    )  # fmt: skip
    # The key alone goes to stdout so that scripts can capture it; the note goes to stderr.
    errors.print(
        f"created {escape(str(path))}; peers put this line in {escape('[[peers]]')} witness_key:",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    typer.echo(vkey)


@app.command("evidence")
def evidence(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")],
    origin: Annotated[str | None, typer.Option("--origin", help="only the forks of this peer's log")] = None,
) -> None:
    """Print, as JSON, each fork the witness refused: the refused signed checkpoint and the cosigned one.

    Each item holds both notes as the peer's log key signed them (`note`, `cosigned_note`) with their sizes
    and roots, and `digest`, the `checkpoint_digest` of the `witness.refused` audit entry that cites it.
    An empty list when the witness refused no fork.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    try:
        forks = kept_fork_evidence(settings, origin)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"the witness store cannot be read: {type(exc).__name__}", EXIT_FAILED)
    typer.echo(json.dumps([f.as_dict() for f in forks], indent=2, ensure_ascii=False))
