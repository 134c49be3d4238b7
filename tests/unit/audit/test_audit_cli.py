"""`fedgate audit keygen | export | verify`: what an operator and an auditor type, and the exit codes."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest
from audit_helpers import append_samples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from audit.keys import load_log_key
from audit.log import AuditLog
from audit.witness import Witness
from gateway.cli import app
from gateway.settings import load_settings

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    path = tmp_path / "site.toml"
    path.write_text(
        'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///store.duckdb"\n'
        'audit_url = "sqlite:///audit.db"\npolicy_dir = "policies"\nmaster_key_env = "FEDGATE_TEST_MASTER"\n'
        'log_key_file = "keys/log.pem"\naudit_origin = "fedgate.example/site-de"\n'
    )
    (tmp_path / "keys").mkdir()
    return path


def keygen(config: Path) -> str:
    result = runner.invoke(app, ["audit", "keygen", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def populate(config: Path, n: int = 12) -> None:
    s = load_settings(config)
    with AuditLog.open(
        s.audit_url, s.audit_origin, load_log_key(s.log_key_file), checkpoint_interval_s=None
    ) as log:
        append_samples(log, n)


def test_keygen_creates_a_private_key_file_and_prints_the_verifier_key(config: Path) -> None:
    vkey = keygen(config)
    key_file = config.parent / "keys" / "log.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert vkey.startswith("fedgate.example/site-de+")
    assert "PRIVATE" not in vkey
    again = runner.invoke(app, ["audit", "keygen", "--config", str(config)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def test_export_then_verify(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    populate(config)
    out = tmp_path / "log.export"
    result = runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 12 entries" in result.stdout
    result = runner.invoke(app, ["audit", "verify", str(out), "--key", vkey])
    assert result.exit_code == 0, result.output
    assert "OK fedgate.example/site-de: 12 entries" in result.stdout
    key_file = tmp_path / "site.vkey"
    key_file.write_text(vkey + "\n")
    assert runner.invoke(app, ["audit", "verify", str(out), "--key", str(key_file)]).exit_code == 0


def test_verify_names_the_bad_entry_and_exits_1(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    populate(config)
    out = tmp_path / "log.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(out)])
    lines = out.read_bytes().split(b"\n")
    lines[3 + 4] = lines[3 + 4].replace(b'"rows":4', b'"rows":5')
    out.write_bytes(b"\n".join(lines))
    result = runner.invoke(app, ["audit", "verify", str(out), "--key", vkey])
    assert result.exit_code == 1
    assert "FAILED (altered) at entry 4" in result.stderr
    assert "expected:" in result.stderr and "found:" in result.stderr


def test_verify_since_a_kept_checkpoint(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    populate(config, 5)
    first = tmp_path / "first.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(first)])
    kept = tmp_path / "kept.checkpoint"
    kept.write_bytes(first.read_bytes().split(b"\n", 8)[-1])  # the note after 5 entries and 3 header lines
    populate(config, 5)
    second = tmp_path / "second.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(second)])
    ok = runner.invoke(app, ["audit", "verify", str(second), "--key", vkey, "--since", str(kept)])
    assert ok.exit_code == 0, ok.output
    assert "only grew" in ok.stdout
    newer = tmp_path / "newer.checkpoint"
    newer.write_bytes(second.read_bytes().split(b"\n", 13)[-1])
    rolled = runner.invoke(app, ["audit", "verify", str(first), "--key", vkey, "--since", str(newer)])
    assert rolled.exit_code == 1 and "rollback" in rolled.stderr


def test_verify_since_the_earlier_export_itself(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    populate(config, 5)
    first = tmp_path / "first.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(first)])
    populate(config, 5)
    second = tmp_path / "second.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(second)])
    ok = runner.invoke(app, ["audit", "verify", str(second), "--key", vkey, "--since", str(first)])
    assert ok.exit_code == 0, ok.output
    assert "consistent with the kept checkpoint of size 5" in ok.stdout
    # The export's checkpoint is checked as a kept one is: a newer export given for an older is a rollback.
    rolled = runner.invoke(app, ["audit", "verify", str(first), "--key", vkey, "--since", str(second)])
    assert rolled.exit_code == 1 and "rollback" in rolled.stderr


def test_verify_since_a_file_that_is_no_checkpoint_is_bad_usage(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    populate(config, 5)
    export = tmp_path / "log.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(export)])
    junk = tmp_path / "notes.txt"
    junk.write_text("the checkpoint is in the export\n")
    binary = tmp_path / "notes.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    cut = tmp_path / "cut.export"
    cut.write_bytes(b"\n".join(export.read_bytes().split(b"\n")[:5]) + b"\n")  # 2 of its 5 entries
    for given, said in ((junk, "neither a signed checkpoint nor an audit export"),
                        (binary, "neither a signed checkpoint nor an audit export"),
                        (cut, "an audit export whose checkpoint cannot be read")):  # fmt: skip
        result = runner.invoke(app, ["audit", "verify", str(export), "--key", vkey, "--since", str(given)])
        assert result.exit_code == 2, result.output
        assert f"--since {given} is {said}" in result.stderr
        assert "FAILED" not in result.stderr


def test_too_few_witnesses_exits_3(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    populate(config, 3)
    out = tmp_path / "log.export"
    runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(out)])
    result = runner.invoke(app, ["audit", "verify", str(out), "--key", vkey, "--min-witnesses", "1"])
    assert result.exit_code == 3 and "FAILED (witnesses)" in result.stderr


def test_usage_and_unreadable_files(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    assert runner.invoke(app, ["audit", "verify", str(tmp_path / "missing"), "--key", vkey]).exit_code == 4
    assert runner.invoke(app, ["audit", "verify", str(config), "--key", "not-a-key+00+AA"]).exit_code == 2
    assert runner.invoke(app, ["audit", "export", "--config", str(tmp_path / "nope.toml"),
                               "--out", str(tmp_path / "x")]).exit_code == 2  # fmt: skip
    not_export = tmp_path / "junk"
    not_export.write_text("hello\n")
    assert runner.invoke(app, ["audit", "verify", str(not_export), "--key", vkey]).exit_code == 1


def cosigned_export(config: Path, tmp_path: Path, witness_name: str) -> tuple[Path, str, str]:
    """Four entries, a checkpoint cosigned by a witness named `witness_name`, exported: the export, the
    log's verifier key and the witness's."""
    vkey = keygen(config)
    populate(config, 4)
    s = load_settings(config)
    with AuditLog.open(
        s.audit_url, s.audit_origin, load_log_key(s.log_key_file), checkpoint_interval_s=None
    ) as log:
        note = log.checkpoint()
        with Witness(f"sqlite:///{tmp_path / 'w.db'}", witness_name, Ed25519PrivateKey.generate(),
                     {s.audit_origin: vkey}) as witness:  # fmt: skip
            log.add_cosignature(4, witness.add_checkpoint(0, [], note), witness.verifier_key)
            wkey = witness.verifier_key
    out = tmp_path / "log.export"
    assert runner.invoke(app, ["audit", "export", "--config", str(config), "--out", str(out)]).exit_code == 0
    return out, vkey, wkey


def test_verify_with_a_witness_cosignature(config: Path, tmp_path: Path) -> None:
    out, vkey, wkey = cosigned_export(config, tmp_path, "witness.example/w")
    result = runner.invoke(
        app, ["audit", "verify", str(out), "--key", vkey, "--witness", wkey, "--min-witnesses", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "cosigned by 1 witness(es): witness.example/w" in result.stdout


def test_verify_names_the_sites_own_witness_as_not_counted(config: Path, tmp_path: Path) -> None:
    own = f"{load_settings(config).audit_origin}/witness"
    out, vkey, wkey = cosigned_export(config, tmp_path, own)
    result = runner.invoke(app, ["audit", "verify", str(out), "--key", vkey, "--witness", wkey])
    assert result.exit_code == 0, result.output
    assert f"not counted: {own}: the log's own witness" in result.stdout
    assert "cosigned by" not in result.stdout


def test_verify_refuses_a_key_of_the_wrong_kind(config: Path, tmp_path: Path) -> None:
    out, vkey, wkey = cosigned_export(config, tmp_path, "witness.example/w")
    log_name = "+".join(vkey.split("+")[:2])  # name+key id (the key's base64 may hold "+" too)
    result = runner.invoke(app, ["audit", "verify", str(out), "--key", vkey, "--witness", vkey])
    assert result.exit_code == 2, result.output
    assert f"--witness {log_name} is a log's Ed25519 verifier key (type 0x01" in result.stderr
    assert "--witness takes a witness's cosignature/v1 verifier key (type 0x04" in result.stderr
    result = runner.invoke(app, ["audit", "verify", str(out), "--key", wkey, "--witness", wkey])
    assert result.exit_code == 2 and "--key takes a log's Ed25519 verifier key" in result.stderr


def export(config: Path, out: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["audit", "export", "-c", str(config), "--out", str(out), *extra], env=env)


def test_export_replaces_an_existing_file_only_with_force(config: Path, tmp_path: Path) -> None:
    keygen(config)
    populate(config, 3)
    out = tmp_path / "log.export"
    out.write_text("an earlier export\n")
    refused = export(config, out)
    assert refused.exit_code == 2 and "exists; give --force to replace it" in refused.stderr
    assert out.read_text() == "an earlier export\n"
    forced = export(config, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes().startswith(b"fedgate-audit-export/v1\n")
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def test_a_failed_export_leaves_the_earlier_one_whole(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keygen(config)
    populate(config, 3)
    out = tmp_path / "log.export"
    assert export(config, out).exit_code == 0
    good = out.read_bytes()

    def broken(*args: object) -> object:
        yield [b'{"half":']
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("audit.log._stream_bodies", broken)
    failed = export(config, out, "--force")
    assert failed.exit_code == 4 and "No space left on device" in failed.stderr
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    def terminated(*args: object) -> object:
        yield [b'{"half":']
        signal.raise_signal(signal.SIGTERM)  # as `kill` or a service manager stops it
        raise AssertionError("SIGTERM did not stop the export")

    def not_handled(signum: int, frame: object) -> None:
        raise AssertionError("the export left SIGTERM to kill it mid-write")

    monkeypatch.setattr("audit.log._stream_bodies", terminated)
    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        stopped = export(config, out, "--force")
    finally:
        assert signal.getsignal(signal.SIGTERM) is not_handled  # put back once the export ended
        signal.signal(signal.SIGTERM, previous)
    assert stopped.exit_code == 143, stopped.output
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_never_writes_over_the_sites_own_files(config: Path, tmp_path: Path) -> None:
    keygen(config)
    populate(config, 3)
    key = tmp_path / "keys/log.pem"
    audit_db = tmp_path / "audit.db"
    link = tmp_path / "innocent.export"
    link.symlink_to(key)
    hard = tmp_path / "hard.export"
    hard.hardlink_to(key)
    before = {path: path.read_bytes() for path in (key, audit_db, config)}
    for out, what in [
        (key, "the log_key_file"),
        (audit_db, "the database of audit_url"),
        (tmp_path / "audit.db-wal", "the database of audit_url"),
        (tmp_path / "state.db", "the database of state_url"),
        (tmp_path / "store.duckdb", "the database of store_url"),
        (config, "the site's config file"),
        (link, "the log_key_file"),
        (hard, "the log_key_file"),
    ]:
        result = export(config, out, "--force")
        assert result.exit_code == 2, (out, result.output)
        assert f"refusing to write the export to {out}: it is {what}" in result.stderr
    assert {path: path.read_bytes() for path in before} == before
    assert not (tmp_path / "state.db").exists() and not (tmp_path / "store.duckdb").exists()


def test_export_of_a_log_that_does_not_exist_creates_none(config: Path, tmp_path: Path) -> None:
    keygen(config)
    result = export(config, tmp_path / "log.export")
    assert result.exit_code == 2
    assert f"the audit log {tmp_path}/audit.db does not exist (audit_url)" in result.stderr
    assert not (tmp_path / "audit.db").exists() and not (tmp_path / "log.export").exists()


def test_export_from_an_unreachable_audit_log_is_one_line(config: Path, tmp_path: Path) -> None:
    keygen(config)
    env = {
        "FEDGATE_AUDIT_URL": "postgresql+psycopg://fedgate:S3cretPW@127.0.0.1:1/audit",  # nothing on port 1
        "FEDGATE_STATE_URL": f"sqlite:///{tmp_path}/state.db",
    }
    result = export(config, tmp_path / "log.export", env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.stderr == (
        "error: the audit log at postgresql+psycopg://fedgate:***@127.0.0.1:1/audit cannot be opened or read "
        "(OperationalError)\n"
    )
    env["FEDGATE_AUDIT_URL"] = "notaurl"
    result = export(config, tmp_path / "log.export", env=env)
    assert result.exit_code == 2
    assert result.stderr == "error: audit_url <unparsable URL> is not a database URL\n"


def test_keygen_creates_the_key_folder(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(
        'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///store.duckdb"\n'
        'audit_url = "sqlite:///audit.db"\npolicy_dir = "policies"\nmaster_key_env = "FEDGATE_TEST_MASTER"\n'
        'log_key_file = "new/keys/log.pem"\n'
    )
    result = runner.invoke(app, ["audit", "keygen", "-c", str(tmp_path / "site.toml")])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "new/keys/log.pem").stat().st_mode) == 0o600


def test_verify_prints_no_empty_line_before_its_error(config: Path, tmp_path: Path) -> None:
    vkey = keygen(config)
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    result = runner.invoke(app, ["audit", "verify", str(junk), "--key", vkey])
    assert result.exit_code == 1 and result.stderr.startswith("FAILED (")
    result = runner.invoke(app, ["audit", "verify", str(tmp_path / "missing"), "--key", vkey])
    assert result.exit_code == 4 and result.stderr.startswith("error: cannot read")


def test_verify_help_lists_every_exit_code() -> None:
    result = runner.invoke(app, ["audit", "verify", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for code in range(6):
        assert f"\n {code} " in result.stdout or f"\n{code} " in result.stdout, code
