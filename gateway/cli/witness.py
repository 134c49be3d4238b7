"""`fedgate witness …`: create the key this gateway cosigns its peers' checkpoints with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.output import errors, fail
from gateway.federation.witnessing import WitnessKeyError, create_witness_key
from gateway.settings import ConfigError, load_settings

app = typer.Typer(help="Witness peers' audit logs (C2SP tlog-witness).", no_args_is_help=True)


@app.command("keygen")
def keygen(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")],
) -> None:
    """Create the witness key at witness_key_file (0600, never overwritten) and print its verifier key.

    Peers put the printed line in their `[[peers]] witness_key` for this site.
    """
    try:
        settings = load_settings(config)
        vkey = create_witness_key(settings)
    except (ConfigError, WitnessKeyError) as exc:
        fail(str(exc))
    # The key alone goes to stdout so that scripts can capture it; the note goes to stderr.
    errors.print(f"created {settings.witness_key_file}; peers put this line in [[peers]] witness_key:")
    typer.echo(vkey)
