"""`fedgate audit …`: export a site's log and verify an export offline."""

from __future__ import annotations

import typer

app = typer.Typer(help="Export and verify the tamper-evident audit log.", no_args_is_help=True)
