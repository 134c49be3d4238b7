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


def audit_events(config: Path) -> list[dict[str, object]]:
    settings = load_settings(config)
    with AuditLog.open(settings.audit_url, settings.audit_origin, None, checkpoint_interval_s=None) as log:
        return [json.loads(e.data) for e in log.entries(0, log.size)]


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
