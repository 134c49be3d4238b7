"""`fedgate serve`: run the site gateway with uvicorn."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from gateway.app import CONFIG_ENV
from gateway.cli.output import fail
from gateway.cli.workers import APP, APP_OPTIONS, Dispatcher, listening_socket
from gateway.decision.errors import PolicyLoadError
from gateway.federation.peers import PeerLink
from gateway.runtime import SiteRuntime, StartupError
from gateway.settings import ConfigError, SiteSettings, load_settings


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
    _check_startup(config, settings)
    os.environ[CONFIG_ENV] = str(config.resolve())
    server = settings.server
    try:
        listener = listening_socket(server.host, server.port)
    except OSError as exc:
        fail(f"{config}: cannot listen on {server.host}:{server.port} ({exc.strerror or exc})")
    typer.echo(serving_line(settings), err=True)
    if server.workers > 1 and hasattr(socket, "send_fds"):
        dispatcher = Dispatcher(listener, server.workers)
        code = dispatcher.run()
        if code:
            raise typer.Exit(code)
    elif server.workers > 1:  # no descriptor passing here: uvicorn's own workers, which bind themselves
        listener.close()
        uvicorn.run(APP, host=server.host, port=server.port, workers=server.workers, **APP_OPTIONS)
    else:
        config_ = uvicorn.Config(APP, host=server.host, port=server.port, **APP_OPTIONS)
        uvicorn.Server(config_).run(sockets=[listener])


def serving_line(settings: SiteSettings) -> str:
    """The line `fedgate serve` prints as it starts, whatever the number of workers: where to reach it."""
    server = settings.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    workers = "1 worker" if server.workers == 1 else f"{server.workers} workers"
    return f"fedgate {settings.site_id} serving on http://{host}:{server.port} ({workers})"


def _check_startup(config: Path, settings: SiteSettings) -> None:
    """Start and close what every worker starts (keys, policies, the audit log, the state, the store's
    engine), so that a site which cannot start says why in one line here, before any worker is spawned,
    instead of in a traceback from each. The store itself is opened by the first query, as in a worker."""
    try:
        runtime = SiteRuntime.start(settings)
    except Exception as exc:  # noqa: BLE001 - whatever stops a worker's start stops the server, said plainly
        fail(f"{config}: the gateway cannot start: {_reason(exc)}")
    try:
        # The federation link reads every peer's request key, which a worker's start checks too.
        asyncio.run(PeerLink(settings).aclose())
    except Exception as exc:  # noqa: BLE001 - a peer the gateway cannot use stops it here, said plainly
        fail(f"{config}: the gateway cannot start: {' '.join(str(exc).split())}")
    finally:
        asyncio.run(runtime.aclose())


def _reason(exc: Exception) -> str:
    # The messages of these errors name the setting or file at fault (and never key material); any other
    # is named by its class as well, since its text may be a library's.
    text = " ".join(str(exc).split()) or "no detail"
    return text if isinstance(exc, StartupError | PolicyLoadError) else f"{type(exc).__name__}: {text}"
