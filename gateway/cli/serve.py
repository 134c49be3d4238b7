"""`fedgate serve`: run the site gateway with uvicorn."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from gateway.app import CONFIG_ENV
from gateway.cli.output import fail
from gateway.cli.workers import APP, APP_OPTIONS, Dispatcher
from gateway.settings import ConfigError, load_settings


def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="the site's TOML config file")],
) -> None:
    """Serve the site's HTTP API on the host, port and workers of the config's server table."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    if settings.dev_mode and not settings.server.is_loopback:
        fail(f"dev_mode is on: refusing to listen on the non-loopback address {settings.server.host}")
    os.environ[CONFIG_ENV] = str(config.resolve())
    server = settings.server
    if server.workers > 1 and hasattr(socket, "send_fds"):
        try:
            dispatcher = Dispatcher(server.host, server.port, server.workers)
        except OSError as exc:
            fail(f"{config}: cannot listen on {server.host}:{server.port} ({exc.strerror})")
        typer.echo(f"fedgate: serving on {server.host}:{server.port} with {server.workers} workers", err=True)
        code = dispatcher.run()
        if code:
            raise typer.Exit(code)
    else:
        uvicorn.run(APP, host=server.host, port=server.port, workers=server.workers, **APP_OPTIONS)
