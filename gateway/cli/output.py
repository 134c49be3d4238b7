"""Shared CLI output: one console per stream, and the exit codes every command uses."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)

EXIT_FAILED = 1  # the work itself failed (a store, an engine, an integrity check)
EXIT_BAD_INPUT = 2  # config, spec, source data or arguments are wrong; the message says where
EXIT_RISK = 3  # the dataset's re-identification risk is above the spec's threshold


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one error line to stderr and exit with `code`. The message is printed as it is: it may quote a
    policy's source line or a path, whose brackets are not console markup."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
