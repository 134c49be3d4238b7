"""`fedgate policy …`: run the policy tests and explain a decision."""

from __future__ import annotations

import typer

app = typer.Typer(help="Test policies and explain decisions.", no_args_is_help=True)
