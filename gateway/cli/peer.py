"""`fedgate peer …`: this site's request-signing key for talking to its federation peers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.markup import escape

from gateway.cli.output import console, create_audited_key, fail, sha256_fingerprint
from gateway.federation.signing import PeerKeyError, generate_peer_key, load_peer_key, public_key_b64
from gateway.settings import ConfigError, SiteSettings, load_settings

app = typer.Typer(
    help=f"Peer request signing: keys other sites list under {escape('[[peers]]')} request_key."
)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")]


def _key_file(config: Path) -> tuple[SiteSettings, Path]:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    if settings.peer_key_file is None:
        fail(f'{config}: peer_key_file is not set; add e.g. peer_key_file = "keys/peer.key"')
    return settings, settings.peer_key_file


@app.command("keygen")
def keygen(config: ConfigOption) -> None:
    """Create peer_key_file (mode 0600; never overwrites) and print its public key for other sites.

    The new key is recorded in the site's audit log (`key.changed`, with the
    SHA-256 of its public key), which must therefore be usable first.
    """
    settings, path = _key_file(config)
    key = create_audited_key(
        settings, "peer", path, lambda: generate_peer_key(path),
        lambda k: sha256_fingerprint(k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
        (PeerKeyError,),
    )  # fmt: skip
    console.print(f"peer signing key written to {escape(str(path))}", highlight=False, soft_wrap=True)
    typer.echo(public_key_b64(key.public_key()))


@app.command("public-key")
def public_key(config: ConfigOption) -> None:
    """Print the base64 public key of peer_key_file (the value of other sites' `request_key`)."""
    _, path = _key_file(config)
    try:
        key = load_peer_key(path)
    except PeerKeyError as exc:
        fail(str(exc))
    typer.echo(public_key_b64(key.public_key()))
