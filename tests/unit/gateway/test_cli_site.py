"""`fedgate keygen`, `ingest` and `catalog` through the CLI: exit codes, messages, audit entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from audit.log import AuditLog
from gateway.cli import app
from gateway.settings import load_settings
from gateway.synth import generate_site

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    pq.write_table(generate_site(0, 3000, 5), tmp_path / "patients.parquet")
    config = tmp_path / "examples/site-de/site.toml"
    assert invoke("keygen", "--config", str(config)).exit_code == 0
    assert invoke("audit", "keygen", "--config", str(config)).exit_code == 0
    return config


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def ingest(config: Path, *extra: str, source: str | None = None, spec: str | None = None):  # type: ignore[no-untyped-def]
    base = config.parents[1]
    return invoke(
        "ingest", "--config", str(config), "--dataset", "cohort",
        "--spec", spec or str(base / "cohort.spec.yaml"),
        "--source", source or str(config.parents[2] / "patients.parquet"), *extra,
    )  # fmt: skip


def audit_events(config: Path, *, keys: bool = False) -> list[dict[str, object]]:
    """The site's audit entries; without `keys`, not the `key.changed` of the master key the fixture made."""
    settings = load_settings(config)
    with AuditLog.open(settings.audit_url, settings.audit_origin, None, checkpoint_interval_s=None) as log:
        events = [json.loads(e.data) for e in log.entries(0, log.size)]
    return events if keys else [e for e in events if e["type"] != "key.changed"]


def test_ingest_publishes_and_audits(site: Path) -> None:
    result = ingest(site)
    assert result.exit_code == 0, result.output
    assert "published cohort v1: 3,000 rows" in result.output
    listing = invoke("catalog", "--config", str(site), "--json")
    entries = json.loads(listing.output)
    assert [(e["dataset"], e["version"], e["row_count"]) for e in entries] == [("cohort", 1, 3000)]
    (event,) = audit_events(site)
    assert event["type"] == "ingest.published"
    assert event["payload"]["dataset_digest"] == f"sha256:{entries[0]['content_digest']}"


def test_keygen_refuses_to_overwrite(site: Path) -> None:
    result = invoke("keygen", "--config", str(site))
    assert result.exit_code == 2 and "refusing to overwrite" in result.output


def test_bad_spec_is_exit_2_and_audited_as_refused(site: Path, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        (site.parents[1] / "cohort.spec.yaml")
        .read_text()
        .replace("  name: {action: drop", "  nme: {action: drop")
    )
    result = ingest(site, spec=str(spec))
    assert result.exit_code == 2
    assert "columns.nme: the source has no such column" in result.output or "has no rule" in result.output
    (event,) = audit_events(site)
    assert event["type"] == "ingest.refused"


def test_missing_source_and_mismatched_dataset(site: Path) -> None:
    result = ingest(site, source=str(site.parent / "absent.parquet"))
    assert result.exit_code == 2 and "absent.parquet" in result.output, result.output
    result = invoke(
        "ingest", "--config", str(site), "--dataset", "other",
        "--spec", str(site.parents[1] / "cohort.spec.yaml"),
        "--source", str(site.parents[2] / "patients.parquet"),
    )  # fmt: skip
    assert result.exit_code == 2 and "the spec is for 'cohort', not --dataset 'other'" in result.output


def test_risk_refusal_is_exit_3_and_override_publishes(site: Path, tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text((site.parents[1] / "cohort.spec.yaml").read_text().replace("k: 5", "k: 500"))
    refused = ingest(site, spec=str(strict))
    assert refused.exit_code == 3 and "below the threshold k=500" in refused.output
    forced = ingest(site, "--override-k", spec=str(strict))
    assert forced.exit_code == 0 and "--override-k" in forced.output
    assert [e["type"] for e in audit_events(site)] == ["ingest.refused", "ingest.published"]


def test_the_published_entry_records_the_threshold_the_override_the_spec_and_the_key_id(
    site: Path, tmp_path: Path
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text((site.parents[1] / "cohort.spec.yaml").read_text().replace("k: 5", "k: 500"))
    assert ingest(site, "--override-k").exit_code == 0  # given, but not needed
    assert ingest(site, "--override-k", spec=str(strict)).exit_code == 0
    entries = json.loads(invoke("catalog", "--config", str(site), "--json").output)
    payloads = [e["payload"] for e in audit_events(site)]
    assert [(p["k_threshold"], p["k_override"]) for p in payloads] == [(5, False), (500, True)]
    assert [p["k_override"] for p in payloads] == [e["k_override"] for e in entries]
    assert [p["spec_digest"] for p in payloads] == [f"sha256:{e['spec_digest']}" for e in entries]
    assert [p["key_id"] for p in payloads] == [e["key_id"] for e in entries]
    assert payloads[0]["spec_digest"] != payloads[1]["spec_digest"]
    assert all(p["key_id"].startswith("fp:") for p in payloads)


def test_a_key_id_whose_hex_runs_six_digits_is_recorded_and_a_key_is_not() -> None:
    from audit.errors import PayloadError
    from audit.events import validate_payload

    published = {"dataset": "cohort/v1", "dataset_digest": f"sha256:{'0' * 64}", "rows": 1, "columns": 1}
    validate_payload("ingest.published", published | {"key_id": "fp:01fa261054600077"})
    for not_an_id in ("fp:01FA261054600077", "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8M=", "fp:01fa"):
        with pytest.raises(PayloadError):
            validate_payload("ingest.published", published | {"key_id": not_an_id})


def test_missing_master_key_is_refused_before_reading(site: Path) -> None:
    (site.parent / "keys/master.key").unlink()
    result = ingest(site)
    assert result.exit_code == 2 and "key file not found" in result.output


def test_missing_log_key_refuses_the_ingest(site: Path) -> None:
    (site.parent / "keys/log.key").unlink()
    result = ingest(site)
    assert result.exit_code == 1 and "audit log cannot record this ingest" in result.output


@pytest.mark.parametrize(
    "broken",
    [
        "dataset: cohort\ncolumns:\n  a: keep\n\tb: keep\n",  # a tab: the parser's message spans lines
        "dataset: cohort\ncolumns:\n  name: drop\n  name: keep\n",  # a column given twice
    ],
)
def test_a_spec_the_parser_refuses_is_shown_whole_and_audited(
    site: Path, tmp_path: Path, broken: str
) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(broken)
    result = ingest(site, spec=str(spec))
    assert result.exit_code == 2, result.output
    assert "broken.yaml" in result.output and "audit log refused" not in result.output
    (event,) = audit_events(site)
    assert event["type"] == "ingest.refused" and "\n" not in event["payload"]["reasons"][0]


def test_a_reason_the_audit_log_will_not_hold_is_recorded_by_its_kind(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reason holding what reads to the log as an opaque identifier (a long column name, line 100001):
    # the log refuses that text, so the refusal is recorded by its kind; the steward still hears it all.
    opaque = "the column " + "a" * 60 + " is wrong"
    monkeypatch.setattr("gateway.cli.site._reason", lambda exc: opaque)
    result = ingest(site, source=str(site.parent / "absent.parquet"))
    assert result.exit_code == 2 and "absent.parquet" in result.output, result.output
    (event,) = audit_events(site)
    assert event["type"] == "ingest.refused"
    assert event["payload"]["reasons"] == ["SourceNotFound (its text is not recorded)"]


def test_another_key_needs_rekey_and_no_withdrawals(site: Path, tmp_path: Path) -> None:
    from gateway.state import GatewayState

    assert ingest(site).exit_code == 0
    other = tmp_path / "other.yaml"
    other.write_text(
        (site.parents[1] / "cohort.spec.yaml").read_text().replace("DSA-2026-014", "DSA-2026-099")
    )
    refused = ingest(site, spec=str(other))
    assert refused.exit_code == 2 and "re-key on purpose (--rekey)" in refused.output
    settings = load_settings(site)
    state = GatewayState(settings.state_url)
    state.add_withdrawals("cohort", "DSA-2026-014", ["00000000-0000-0000-0000-000000000001"])
    state.close()
    blocked = ingest(site, "--rekey", spec=str(other))
    assert blocked.exit_code == 2 and "1 consent withdrawal(s)" in blocked.output
    assert [e["type"] for e in audit_events(site)] == ["ingest.published", "ingest.refused", "ingest.refused"]


def test_a_project_dataset_keeps_the_context_it_was_published_under_until_rekeyed(
    site: Path, tmp_path: Path
) -> None:
    # `agreement: X` derives what `project: X` derived before project contexts carried `project:`.
    assert ingest(site).exit_code == 0
    project = tmp_path / "project.yaml"
    text = (site.parents[1] / "cohort.spec.yaml").read_text()
    project.write_text(text.replace("agreement: DSA-2026-014", "project: DSA-2026-014"))
    continued = ingest(site, spec=str(project))
    assert continued.exit_code == 0, continued.output
    assert ingest(site, "--rekey", spec=str(project)).exit_code == 0
    entries = json.loads(invoke("catalog", "--config", str(site), "--json").output)
    contexts = [e["key_context"] for e in entries]
    assert contexts == ["DSA-2026-014", "DSA-2026-014", "project:DSA-2026-014"]
    digests = [e["content_digest"] for e in entries]
    assert digests[0] == digests[1] != digests[2]  # the same tokens and shifts until re-keyed


def test_an_audit_log_that_cannot_be_opened_is_one_line_not_a_traceback(site: Path) -> None:
    settings = load_settings(site)
    audit_file = Path(settings.audit_url.removeprefix("sqlite:///"))
    audit_file.parent.mkdir(parents=True, exist_ok=True)
    audit_file.write_bytes(b"this is not a database" * 100)
    result = ingest(site)
    assert result.exit_code == 1, result.output
    assert "audit log cannot record this ingest" in result.output and "Traceback" not in result.output


def test_a_version_the_audit_log_does_not_record_is_not_published(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.errors import StorageError

    original = AuditLog.append

    def append(self: AuditLog, event_type: str, *args: object, **kwargs: object) -> object:
        if event_type == "ingest.published":
            raise StorageError("the disk is full")
        return original(self, event_type, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AuditLog, "append", append)
    result = ingest(site)
    assert result.exit_code == 1 and "the audit log refused the ingest record" in result.output
    listing = invoke("catalog", "--config", str(site), "--json")
    assert json.loads(listing.output) == []  # the version was rolled back with its record
    monkeypatch.undo()
    assert ingest(site).exit_code == 0  # and the next ingest publishes v1
    assert [(e["type"], e["payload"]["dataset"]) for e in audit_events(site)] == [
        ("ingest.published", "cohort/v1")
    ]


def test_a_long_reason_is_recorded_cut_to_what_the_log_takes(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_reason = "the spec says " + "one thing and then another " * 30
    monkeypatch.setattr("gateway.cli.site._reason", lambda exc: long_reason)
    assert ingest(site, source=str(site.parent / "absent.parquet")).exit_code == 2
    (event,) = audit_events(site)
    (recorded,) = event["payload"]["reasons"]
    assert len(recorded) == 500 and recorded.endswith("…") and long_reason.startswith(recorded[:-1])


UNREACHABLE_LOG = "postgresql+psycopg://fedgate:S3cretPW@127.0.0.1:1/audit"  # nothing listens on port 1


def minimal_config(folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "site.toml"
    lines = [
        'site_id = "site-de"', 'jurisdiction = "DE"', 'store_url = "duckdb:///var/store.duckdb"',
        'audit_url = "sqlite:///var/audit.db"', 'policy_dir = "policies"', 'log_key_file = "keys/log.key"',
        *extra,
    ]  # fmt: skip
    if not any(line.startswith("master_key") for line in extra):
        lines.append('master_key_file = "keys/master.key"')
    config.write_text("\n".join(lines) + "\n")
    return config


def one_line_error(result: object) -> str:
    """The stderr of a command that failed as a command should: one line, and no exception escaped."""
    assert isinstance(result.exception, SystemExit), result.exception  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    return str(stderr)


def test_keygen_records_the_master_key_by_the_digest_of_its_key_id(site: Path) -> None:
    import hashlib

    from pseudonymize.keys import SecretKey

    key_id = SecretKey.from_file(site.parent / "keys/master.key").key_id
    (event,) = audit_events(site, keys=True)
    assert event["type"] == "key.changed"
    fingerprint = "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()
    assert event["payload"] == {"key": "master", "action": "created", "fingerprint": fingerprint}
    assert (site.parent / "keys/master.key").read_text().strip() not in json.dumps(event)


def test_keygen_creates_no_key_the_audit_log_cannot_record(tmp_path: Path) -> None:
    config = minimal_config(tmp_path)
    env = {"FEDGATE_AUDIT_URL": UNREACHABLE_LOG, "FEDGATE_STATE_URL": f"sqlite:///{tmp_path}/state.db"}
    result = CliRunner().invoke(app, ["keygen", "-c", str(config)], env=env)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "audit log" in line and "S3cretPW" not in line and "OperationalError" in line
    assert not (tmp_path / "keys/master.key").exists()


def test_keygen_prints_a_path_that_looks_like_markup_as_it_is(tmp_path: Path) -> None:
    config = minimal_config(tmp_path, 'master_key_file = "mk/[bold]site[/bold].key"')
    result = invoke("keygen", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert f"written to {tmp_path}/mk/[bold]site[/bold].key" in " ".join(result.output.split())
    assert (tmp_path / "mk/[bold]site[/bold].key").is_file()


def test_catalog_of_a_store_that_does_not_exist_is_refused_and_not_created(tmp_path: Path) -> None:
    config = minimal_config(tmp_path)
    result = CliRunner().invoke(app, ["catalog", "-c", str(config)])
    assert result.exit_code == 2
    assert f"the store {tmp_path}/var/store.duckdb does not exist" in one_line_error(result)
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("store_url", "expected"),
    [
        ("notaurl", "store_url <unparsable URL> is not a database URL"),
        ("mysql://fedgate:S3cretPW@127.0.0.1:1/db", "needs a database driver that is not installed"),
        ("nosuchdb://fedgate:S3cretPW@127.0.0.1:1/db", "names a kind of database SQLAlchemy does not know"),
    ],
)
def test_catalog_with_an_unusable_store_url_is_one_line_and_exit_2(
    tmp_path: Path, store_url: str, expected: str
) -> None:
    config = minimal_config(tmp_path)
    result = CliRunner().invoke(app, ["catalog", "-c", str(config)], env={"FEDGATE_STORE_URL": store_url})
    assert result.exit_code == 2
    line = one_line_error(result)
    assert expected in line and "S3cretPW" not in line


def test_catalog_of_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = minimal_config(tmp_path)
    url = "postgresql+psycopg://fedgate:S3cretPW@127.0.0.1:1/store"
    result = CliRunner().invoke(app, ["catalog", "-c", str(config)], env={"FEDGATE_STORE_URL": url})
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "cannot open the store at postgresql+psycopg://fedgate:***@127.0.0.1:1/store" in line


def test_a_store_url_that_is_no_url_is_named_without_repeating_it() -> None:
    from pseudonymize.errors import StoreError
    from pseudonymize.store import Store

    with pytest.raises(StoreError, match="cannot open the store at <unparsable URL>: ArgumentError"):
        Store("S3cretPW")


def _interrupt_during_ingest(monkeypatch: pytest.MonkeyPatch, *, as_runtime_error: bool) -> None:
    import signal

    def interrupted(*args: object, **kwargs: object) -> object:
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, delivered to this (the main) thread
        except KeyboardInterrupt:
            if as_runtime_error:  # as DuckDB reports a query that Ctrl-C stopped
                raise RuntimeError("Query interrupted") from None
            raise
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr("gateway.cli.site.run_ingest", interrupted)


@pytest.mark.parametrize("as_runtime_error", [False, True])
def test_ctrl_c_during_ingest_is_reported_audited_and_exits_130(
    site: Path, monkeypatch: pytest.MonkeyPatch, as_runtime_error: bool
) -> None:
    import signal

    before = signal.getsignal(signal.SIGINT)
    _interrupt_during_ingest(monkeypatch, as_runtime_error=as_runtime_error)
    result = ingest(site)
    assert result.exit_code == 130, result.output
    assert "interrupted; nothing was published" in result.output
    assert "RuntimeError" not in result.output
    (event,) = audit_events(site)
    assert event["type"] == "ingest.refused" and event["payload"]["reasons"] == ["interrupted"]
    assert signal.getsignal(signal.SIGINT) is before
    assert json.loads(invoke("catalog", "--config", str(site), "--json").output) == []
