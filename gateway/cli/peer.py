"""`fedgate peer …`: this site's request-signing key for talking to its federation peers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.output import console, fail
from gateway.federation.signing import PeerKeyError, generate_peer_key, load_peer_key, public_key_b64
from gateway.settings import ConfigError, load_settings

app = typer.Typer(help="Peer request signing: keys other sites list under [[peers]] request_key.")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")]


def _key_file(config: Path) -> Path:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    if settings.peer_key_file is None:
        fail(f'{config}: peer_key_file is not set; add e.g. peer_key_file = "keys/peer.key"')
    return settings.peer_key_file


@app.command("keygen")
def keygen(config: ConfigOption) -> None:
    """Create peer_key_file (mode 0600; never overwrites) and print its public key for other sites."""
    path = _key_file(config)
    try:
        key = generate_peer_key(path)
    except PeerKeyError as exc:
        fail(str(exc))
    console.print(f"peer signing key written to {path}", highlight=False, soft_wrap=True)
    typer.echo(public_key_b64(key.public_key()))


@app.command("public-key")
def public_key(config: ConfigOption) -> None:
    """Print the base64 public key of peer_key_file (the value of other sites' `request_key`)."""
    path = _key_file(config)
    try:
        key = load_peer_key(path)
    except PeerKeyError as exc:
        fail(str(exc))
    typer.echo(public_key_b64(key.public_key()))
