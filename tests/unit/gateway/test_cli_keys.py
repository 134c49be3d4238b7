"""`fedgate peer keygen` and `fedgate witness keygen`: each new key audited by its public key's digest, none
made that the audit log cannot record, and brackets in help and messages printed as they are."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner, Result

from audit.log import AuditLog
from audit.notes import parse_verifier_key, public_key_bytes
from gateway.cli import app
from gateway.federation.signing import load_peer_key
from gateway.settings import load_settings

runner = CliRunner()
UNREACHABLE = {
    "FEDGATE_AUDIT_URL": "postgresql+psycopg://fedgate:S3cretPW@127.0.0.1:1/audit",  # nothing on port 1
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///var/store.duckdb"\n'
        'audit_url = "sqlite:///var/audit.db"\npolicy_dir = "policies"\nmaster_key_file = "keys/master.key"\n'
        'log_key_file = "keys/log.key"\npeer_key_file = "keys/peer.key"\n'
        'witness_key_file = "keys/witness.key"\n'
    )
    return path


def key_events(config: Path) -> list[dict[str, object]]:
    settings = load_settings(config)
    with AuditLog.open(settings.audit_url, settings.audit_origin, None, checkpoint_interval_s=None) as log:
        events = [json.loads(e.data) for e in log.entries(0, log.size)]
    return [e["payload"] for e in events if e["type"] == "key.changed"]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def test_peer_keygen_is_audited_by_the_digest_of_its_public_key(config: Path) -> None:
    result = invoke("peer", "keygen", "-c", str(config))
    assert result.exit_code == 0, result.output
    public = load_peer_key(config.parent / "keys/peer.key").public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    fingerprint = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert key_events(config) == [{"key": "peer", "action": "created", "fingerprint": fingerprint}]


def test_witness_keygen_needs_no_log_key_and_prints_the_peers_table_name(config: Path) -> None:
    result = invoke("witness", "keygen", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert "peers put this line in [[peers]] witness_key:" in result.stderr
    key = parse_verifier_key(result.stdout.strip())
    fingerprint = "sha256:" + hashlib.sha256(public_key_bytes(key.public_key)).hexdigest()
    assert key_events(config) == [
        {"key": "witness", "action": "created", "fingerprint": fingerprint, "name": key.name}
    ]


@pytest.mark.parametrize("command", [["keygen"], ["peer", "keygen"], ["witness", "keygen"]])
def test_no_key_is_made_that_an_unreachable_audit_log_cannot_record(
    config: Path, tmp_path: Path, command: list[str]
) -> None:
    env = UNREACHABLE | {"FEDGATE_STATE_URL": f"sqlite:///{tmp_path}/state.db"}
    result = invoke(*command, "-c", str(config), env=env)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == (
        "error: the audit log cannot record a new key, so none is created: the audit log at "
        "postgresql+psycopg://fedgate:***@127.0.0.1:1/audit cannot be opened (OperationalError)\n"
    )
    assert not (tmp_path / "keys").exists()


def test_a_key_whose_record_the_log_refuses_is_removed(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.errors import StorageError

    def refuse(*args: object, **kwargs: object) -> object:
        raise StorageError("the disk is full")

    monkeypatch.setattr(AuditLog, "append", refuse)
    result = invoke("peer", "keygen", "-c", str(config))
    assert result.exit_code == 1 and "the disk is full" in result.stderr
    assert not (config.parent / "keys/peer.key").exists()


def test_help_shows_the_peers_table_name() -> None:
    assert "[[peers]] request_key" in " ".join(invoke("peer", "--help").stdout.split())
    assert "[[peers]]" in invoke("--help").stdout
    assert "[[peers]] witness_key" in " ".join(invoke("witness", "keygen", "--help").stdout.split())


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["peer", "keygen"], 'peer_key_file = "keys/peer.key"'),
        (["witness", "keygen"], 'witness_key_file = "keys/witness.key"'),
    ],
)
def test_keygen_without_its_key_file_gives_the_line_to_add(
    config: Path, command: list[str], line: str
) -> None:
    key = line.split(" = ")[0]
    config.write_text(
        "".join(f"{row}\n" for row in config.read_text().splitlines() if not row.startswith(key))
    )
    result = invoke(*command, "-c", str(config))
    assert result.exit_code == 2
    assert f"{config}: {key} is not set; add e.g. {line}" in " ".join(result.stderr.split())
    assert not (config.parent / "keys").exists()
