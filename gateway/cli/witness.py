"""`fedgate witness …`: create the key this gateway cosigns its peers' checkpoints with."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from audit.errors import AuditError
from audit.notes import parse_verifier_key, public_key_bytes
from gateway.cli.output import EXIT_FAILED, errors, fail
from gateway.federation.witnessing import WitnessKeyError, create_witness_key
from gateway.settings import ConfigError, load_settings
from gateway.site_log import local_steward, open_site_log

app = typer.Typer(help="Witness peers' audit logs (C2SP tlog-witness).", no_args_is_help=True)


@app.command("keygen")
def keygen(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")],
) -> None:
    """Create the witness key at witness_key_file (0600, never overwritten) and print its verifier key.

    Peers put the printed line in their `[[peers]] witness_key` for this site. The new key is recorded in
    the site's audit log (`key.changed`), which must therefore be usable first.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    try:
        log = open_site_log(settings)
    except AuditError as exc:
        fail(f"the audit log cannot record the new key: {exc}", EXIT_FAILED)
    try:
        vkey = create_witness_key(settings)
        key = parse_verifier_key(vkey)
        fingerprint = hashlib.sha256(public_key_bytes(key.public_key)).hexdigest()
        log.append(
            "key.changed",
            actor=local_steward(settings),
            payload={
                "key": "witness",
                "action": "created",
                "fingerprint": f"sha256:{fingerprint}",
                "name": key.name,
            },
        )
    except WitnessKeyError as exc:
        fail(str(exc))
    except AuditError as exc:
        fail(f"the key was created but its creation could not be audited: {exc}", EXIT_FAILED)
    finally:
        log.close()
    # The key alone goes to stdout so that scripts can capture it; the note goes to stderr.
    errors.print(f"created {settings.witness_key_file}; peers put this line in [[peers]] witness_key:")
    typer.echo(vkey)
