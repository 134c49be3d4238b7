"""UnsafeDevTokenIssuer and `fedgate dev-token`: only in dev mode on loopback, warned, audited, and its
tokens accepted only by a gateway that was itself started in dev mode."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
import typer
from auth_helpers import run
from oidc_issuer import LoopbackTestIssuer
from typer.testing import CliRunner, Result

from audit.keys import generate_log_key
from audit.log import AuditLog
from gateway.auth import (
    BadSignature,
    DevIssuerKeyError,
    Principal,
    TokenValidator,
    UnknownSigningKey,
    UnsafeDevIssuerRefused,
    WrongIssuer,
)
from gateway.auth.dev import UnsafeDevTokenIssuer
from gateway.cli import dev
from gateway.settings import SiteSettings, load_settings


def write_site(folder: Path, *, dev_mode: bool = True, host: str = "127.0.0.1", oidc: str = "") -> Path:
    (folder / "keys").mkdir(parents=True, exist_ok=True)
    if not (folder / "keys/log.key").exists():
        generate_log_key(folder / "keys/log.key")
    config = folder / "site.toml"
    config.write_text(
        f"""site_id = "site-de"
jurisdiction = "DE"
store_url = "duckdb:///var/store.duckdb"
audit_url = "sqlite:///var/audit.db"
policy_dir = "policies"
master_key_file = "keys/master.key"
log_key_file = "keys/log.key"
dev_mode = {"true" if dev_mode else "false"}
{oidc}
[server]
host = "{host}"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_site(tmp_path)


def settings_of(config: Path) -> SiteSettings:
    return load_settings(config)


def validate_for_site(settings: SiteSettings, token: str) -> Principal:
    async def go() -> Principal:
        async with TokenValidator.for_site(settings) as validator:
            return await validator.validate(token)

    return run(go())


def test_refused_without_dev_mode(tmp_path: Path) -> None:
    settings = settings_of(write_site(tmp_path, dev_mode=False))
    with pytest.raises(UnsafeDevIssuerRefused, match="dev_mode = true"):
        UnsafeDevTokenIssuer(settings)
    assert not (tmp_path / "var/dev-issuer.key").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "gateway.example.org", "::"])  # noqa: S104
def test_refused_on_a_non_loopback_bind(tmp_path: Path, host: str) -> None:
    settings = settings_of(write_site(tmp_path, host=host))
    with pytest.raises(UnsafeDevIssuerRefused, match="not a loopback address"):
        UnsafeDevTokenIssuer(settings)
    # A gateway configured this way cannot start in dev mode at all.
    with pytest.raises(UnsafeDevIssuerRefused):
        TokenValidator.for_site(settings)
    assert not (tmp_path / "var/dev-issuer.key").exists()


def test_warns_every_time_it_is_built(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_of(site)
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        UnsafeDevTokenIssuer(settings)
        UnsafeDevTokenIssuer(settings)
    unsafe = [r for r in caplog.records if "UNSAFE" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(unsafe) == 2


def test_key_file_is_created_once_beside_the_state_db_owner_only(site: Path) -> None:
    settings = settings_of(site)
    first = UnsafeDevTokenIssuer(settings)
    key_file = Path(settings.state_url.removeprefix("sqlite:///")).parent / "dev-issuer.key"
    assert first.key_path == key_file and key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = UnsafeDevTokenIssuer(settings)
    assert second.verification_keys().keys[0].kid == first.verification_keys().keys[0].kid
    token = first.issue("dev-user", "Dev Org", "DE", ["researcher"])
    assert validate_for_site(settings, token).sub == "dev-user"


def test_key_file_readable_by_others_is_refused(site: Path) -> None:
    settings = settings_of(site)
    key_file = UnsafeDevTokenIssuer(settings).key_path
    key_file.chmod(0o644)
    with pytest.raises(DevIssuerKeyError, match="chmod 600"):
        UnsafeDevTokenIssuer(settings)


def test_dev_tokens_validate_in_a_dev_mode_gateway_and_are_marked(site: Path) -> None:
    settings = settings_of(site)
    token = UnsafeDevTokenIssuer(settings).issue("dev-user", "Dev Org", "FR", ["steward", "researcher"])
    principal = validate_for_site(settings, token)
    assert principal.dev is True
    assert principal.issuer == "urn:fedgate:unsafe-dev-issuer:site-de"
    assert (principal.sub, principal.org, principal.country) == ("dev-user", "Dev Org", "FR")
    assert principal.roles == frozenset({"researcher", "steward"})


def test_dev_tokens_are_refused_once_dev_mode_is_off(tmp_path: Path) -> None:
    dev_settings = settings_of(write_site(tmp_path))
    token = UnsafeDevTokenIssuer(dev_settings).issue("dev-user", "Dev Org", "DE", ["researcher"])
    with LoopbackTestIssuer() as idp:
        oidc = f'[oidc]\nissuer = "{idp.issuer_url}"\naudience = "{idp.audience}"\n'
        production = settings_of(write_site(tmp_path, dev_mode=False, oidc=oidc))
        with pytest.raises(WrongIssuer):
            validate_for_site(production, token)
        # The production gateway still takes its provider's tokens, unmarked.
        assert validate_for_site(production, idp.token()).dev is False


def test_dev_mode_gateway_with_a_provider_takes_both_and_dev_claims_follow_its_paths(tmp_path: Path) -> None:
    with LoopbackTestIssuer(roles_claim="realm_access.roles") as idp:
        oidc = (
            f'[oidc]\nissuer = "{idp.issuer_url}"\naudience = "{idp.audience}"\n'
            'roles_claim = "realm_access.roles"\n'
        )
        settings = settings_of(write_site(tmp_path, oidc=oidc))
        dev_token = UnsafeDevTokenIssuer(settings).issue("dev-user", "Dev Org", "DE", ["auditor"])
        assert validate_for_site(settings, dev_token).roles == frozenset({"auditor"})
        from_idp = validate_for_site(settings, idp.token(roles=["researcher"]))
        assert from_idp.dev is False and from_idp.roles == frozenset({"researcher"})
        # The provider cannot mint dev tokens: its key is not the dev key.
        posing = idp.token(iss="urn:fedgate:unsafe-dev-issuer:site-de", aud=idp.audience)
        with pytest.raises((UnknownSigningKey, BadSignature)):
            validate_for_site(settings, posing)


def test_another_sites_dev_key_does_not_verify(tmp_path: Path) -> None:
    ours = settings_of(write_site(tmp_path / "ours"))
    theirs = settings_of(write_site(tmp_path / "theirs"))
    token = UnsafeDevTokenIssuer(theirs).issue("dev-user", "Dev Org", "DE", ["researcher"])
    with pytest.raises((UnknownSigningKey, BadSignature)):
        validate_for_site(ours, token)


@pytest.mark.parametrize(
    ("sub", "country", "roles", "ttl"),
    [("", "DE", ["researcher"], 60), ("u", "de", ["researcher"], 60), ("u", "DE", [], 60),
     ("u", "DE", ["admin"], 60), ("u", "DE", ["researcher"], 0), ("u", "DE", ["researcher"], 86_401)],
)  # fmt: skip
def test_issue_refuses_unusable_arguments(
    site: Path, sub: str, country: str, roles: list[str], ttl: int
) -> None:
    with pytest.raises(ValueError):
        UnsafeDevTokenIssuer(settings_of(site)).issue(sub, "Org", country, roles, ttl_s=ttl)


# -- the CLI -----------------------------------------------------------------------------------------------

cli = typer.Typer()
cli.callback()(lambda: None)
cli.command("dev-token")(dev.dev_token)


def dev_token(config: Path, *extra: str) -> Result:
    args = ["dev-token", "--config", str(config), "--sub", "alice", "--org", "Uni Example", "--country", "DE"]
    return CliRunner().invoke(cli, [*args, *extra])


def audit_events(config: Path) -> list[dict[str, object]]:
    settings = settings_of(config)
    if not Path(settings.audit_url.removeprefix("sqlite:///")).exists():
        return []
    with AuditLog.open(settings.audit_url, settings.audit_origin, None, checkpoint_interval_s=None) as log:
        return [json.loads(e.data) for e in log.entries(0, log.size)]


def test_cli_prints_only_the_token_and_audits_the_issue(site: Path) -> None:
    result = dev_token(site, "--role", "researcher", "--role", "steward", "--ttl", "600")
    assert result.exit_code == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    assert "UNSAFE" in result.stderr
    principal = validate_for_site(settings_of(site), token)
    assert principal.dev and principal.sub == "alice" and principal.roles == {"researcher", "steward"}
    (event,) = audit_events(site)
    assert event["type"] == "dev_token.issued"
    payload = event["payload"]
    assert isinstance(payload, dict)
    assert payload["roles"] == ["researcher", "steward"] and payload["expires_in_s"] == 600
    assert str(payload["subject_digest"]).startswith("sha256:")
    assert "alice" not in json.dumps(event) and token not in json.dumps(event)
    assert str(event["actor"]["sub"]).startswith("local:")  # type: ignore[index]


def test_cli_refuses_without_dev_mode(tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_mode=False)
    result = dev_token(config, "--role", "researcher")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "dev_mode = true" in result.stderr
    assert audit_events(config) == []


def test_cli_refuses_a_non_loopback_server(tmp_path: Path) -> None:
    config = write_site(tmp_path, host="0.0.0.0")  # noqa: S104 - the bind being refused
    result = dev_token(config, "--role", "researcher")
    assert result.exit_code == 2 and result.stdout == ""
    assert "not a loopback address" in result.stderr
    assert audit_events(config) == []


@pytest.mark.parametrize(
    "extra",
    [
        ["--role", "admin"],
        [],
        ["--role", "researcher", "--ttl", "0"],
        ["--role", "researcher", "--country", "XX"],
    ],
)
def test_cli_refuses_bad_arguments(site: Path, extra: list[str]) -> None:
    result = dev_token(site, *extra)
    assert result.exit_code == 2 and result.stdout == ""
    assert audit_events(site) == []


def test_cli_without_a_log_key_issues_nothing(site: Path) -> None:
    (site.parent / "keys/log.key").unlink()
    result = dev_token(site, "--role", "researcher")
    assert result.exit_code == 1 and result.stdout == ""
    assert "audit log" in result.stderr


def test_cli_bad_config_file(tmp_path: Path) -> None:
    result = dev_token(tmp_path / "missing.toml", "--role", "researcher")
    assert result.exit_code == 2 and "file not found" in result.stderr


def test_cli_with_an_unreachable_audit_log_issues_nothing_and_says_so_in_one_line(
    site: Path, tmp_path: Path
) -> None:
    env = {
        "FEDGATE_AUDIT_URL": "postgresql+psycopg://fedgate:S3cretPW@127.0.0.1:1/audit",  # nothing on port 1
        "FEDGATE_STATE_URL": f"sqlite:///{tmp_path}/var/state.db",
    }
    result = CliRunner().invoke(cli, ["dev-token", "--config", str(site), "--sub", "alice", "--org", "Uni",
                                      "--country", "DE", "--role", "researcher"], env=env)  # fmt: skip
    assert result.exit_code == 1 and result.stdout == ""
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "so none is issued" in line and "OperationalError" in line and "S3cretPW" not in result.stderr
