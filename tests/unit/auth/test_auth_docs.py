"""docs/auth.md stays true: its config example loads, every setting and error is documented, and the
documented `fedgate dev-token` command line runs."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import typer
from typer.testing import CliRunner

from audit.keys import generate_log_key
from gateway.auth import AuthError, DevIssuerError
from gateway.auth import errors as auth_errors
from gateway.cli import dev
from gateway.settings import OidcSettings

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "auth.md").read_text()


def test_config_example_loads_and_documents_every_setting() -> None:
    block = re.search(r"```toml\n(.*?)```", DOC, re.DOTALL)
    assert block
    oidc = OidcSettings(**tomllib.loads(block.group(1))["oidc"])
    assert oidc.roles_claim == "realm_access.roles"
    for name in OidcSettings.model_fields:
        assert f"`{name}`" in DOC, f"docs/auth.md does not document [oidc] {name}"


def test_every_error_is_in_the_documented_tree() -> None:
    names = [
        name
        for name, value in vars(auth_errors).items()
        if isinstance(value, type) and issubclass(value, AuthError | DevIssuerError)
    ]
    assert len(names) >= 20
    for name in names:
        assert name in DOC, f"docs/auth.md does not name {name}"
        assert name in (auth_errors.__doc__ or ""), f"the errors module docstring does not draw {name}"


def test_documented_dev_token_command_runs(tmp_path: Path) -> None:
    line = next(ln for ln in DOC.splitlines() if ln.startswith("fedgate dev-token"))
    args = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[1:]
    (tmp_path / "keys").mkdir()
    generate_log_key(tmp_path / "keys/log.key")
    config = tmp_path / "site.toml"
    config.write_text(
        'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///var/store.duckdb"\n'
        'audit_url = "sqlite:///var/audit.db"\npolicy_dir = "policies"\nmaster_key_file = "keys/m.key"\n'
        'log_key_file = "keys/log.key"\ndev_mode = true\n'
    )
    args[args.index("site.toml")] = str(config)
    cli = typer.Typer()
    cli.callback()(lambda: None)
    cli.command("dev-token")(dev.dev_token)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count(".") == 2
    assert (tmp_path / "var/dev-issuer.key").exists()
