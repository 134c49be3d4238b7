"""`fedgate dev-token`: an unsafe, loopback-only token issuer for local development."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from audit.errors import AuditError
from gateway.auth.dev import MAX_TTL_S, UnsafeDevTokenIssuer
from gateway.auth.errors import DevIssuerError
from gateway.auth.principal import ROLES
from gateway.cli.output import EXIT_FAILED, errors, fail, open_log
from gateway.settings import ConfigError, load_settings
from gateway.site_log import local_steward


def dev_token(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")],
    sub: Annotated[str, typer.Option(help="subject the token names")],
    org: Annotated[str, typer.Option(help="organisation of the subject")],
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2 country of the subject, e.g. DE")],
    role: Annotated[
        list[str], typer.Option("--role", help=f"a role to grant ({', '.join(ROLES)}); repeat for several")
    ],
    ttl: Annotated[int, typer.Option(min=1, max=MAX_TTL_S, help="seconds until the token expires")] = 3600,
) -> None:
    """UNSAFE: print a bearer token for any identity, signed by this site's dev key (dev_mode only).

    Refused unless the config has `dev_mode = true` and the server listens on a loopback address. Every
    token issued is recorded in the site's audit log as `dev_token.issued`. Only the token goes to stdout.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    try:
        issuer = UnsafeDevTokenIssuer(settings)
    except DevIssuerError as exc:
        fail(str(exc))
    roles = sorted(set(role))
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        fail(f"--role must be one of {', '.join(ROLES)}")
    try:
        token = issuer.issue(sub, org, country, roles, ttl_s=ttl)
    except ValueError as exc:
        fail(str(exc))
    log = open_log(settings, "the audit log cannot record this dev token, so none is issued")
    try:
        log.append(
            "dev_token.issued",
            actor=local_steward(settings),
            payload={
                "roles": roles,
                "expires_in_s": ttl,
                "subject_digest": "sha256:" + hashlib.sha256(sub.encode()).hexdigest(),
            },
        )
    except AuditError as exc:
        fail(f"the audit log refused the dev token record, so none is issued: {exc}", EXIT_FAILED)
    finally:
        log.close()
    errors.print(
        f"[yellow]UNSAFE dev token[/] for roles {', '.join(roles)}, valid {ttl} s; "
        "accepted only by this site's gateway in dev mode",
        highlight=False,
    )
    typer.echo(token)
