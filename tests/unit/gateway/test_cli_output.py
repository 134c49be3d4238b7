"""CLI error lines print what they quote as it is: brackets in a Rego source line or a path are no markup."""

from __future__ import annotations

import pytest
import typer

from gateway.cli.output import EXIT_BAD_INPUT, fail


@pytest.mark.parametrize(
    "message",
    [
        "lib/lib.rego:134:11 | deny[msg] { | error: `if` keyword is required before rule body",
        "lib/lib.rego:135:9 | msg := input.x[/y] | error: expecting `}`",
        "/srv/site[/x]/site.toml: file not found",
        "[bold]not bold[/bold] [link=https://example.org]x[/link]",
    ],
)
def test_an_error_line_quotes_its_message_verbatim(message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        fail(message)
    assert exited.value.exit_code == EXIT_BAD_INPUT
    printed = " ".join(capsys.readouterr().err.split())
    assert printed == "error: " + " ".join(message.split())
