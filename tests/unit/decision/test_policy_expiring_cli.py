"""`fedgate policy expiring`: what ends soon from the site's policy folder and store, as a table or JSON;
exit 0 when nothing has ended, 1 when something has, 2 when the config, the folder or the store is
unusable. The store is read as the gateway reads it, so a running gateway holding it does not stop the
check."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.query.execute import store_engine
from pseudonymize.store import CATALOG, CatalogEntry, ConsentTerms, Store

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def _day(offset: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset)).isoformat()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site whose agreements and licence all stay in force for years, but DSA-2026-021 (40 days)."""
    shutil.copytree(POLICIES, tmp_path / "policies", ignore=shutil.ignore_patterns("*_test.rego"))
    for name, key in (("agreements", None), ("export_control", "licences")):
        path = tmp_path / f"policies/data/{name}.json"
        document = json.loads(path.read_text())
        for term in (document if key is None else document[key]).values():
            term["not_before"], term["not_after"] = "2000-01-01", _day(2000)
        path.write_text(json.dumps(document))
    set_end(tmp_path, "DSA-2026-021", _day(40))
    config = tmp_path / "site.toml"
    config.write_text(
        'site_id = "site-de"\njurisdiction = "DE"\nstore_url = "duckdb:///store.duckdb"\n'
        'audit_url = "sqlite:///audit.db"\npolicy_dir = "policies"\n'
        'master_key_env = "FEDGATE_TEST_UNUSED_KEY"\nlog_key_file = "log.key"\n'
    )
    Store(f"duckdb:///{tmp_path / 'store.duckdb'}").close()  # an empty catalog
    return config


def publish(root: Path, dataset: str, version: int, use_until: dt.date | None) -> None:
    """A catalog row of a version whose consent limits use in time (DUO:0000025)."""
    row = CatalogEntry(
        dataset=dataset, version=version, table_name=f"ds_{dataset}__v{version}",
        published_at="2026-01-01T00:00:00Z", row_count=1, columns=[], content_digest="c", spec_digest="s",
        key_id="k", key_context="x", duo=["DUO:0000042", "DUO:0000025"], jurisdiction="DE",
        consent_terms=ConsentTerms(use_until=use_until),
    ).stored_row()  # fmt: skip
    with duckdb.connect(str(root / "store.duckdb")) as con:
        con.execute(f"INSERT INTO {CATALOG} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()))  # fmt: skip


def set_end(root: Path, agreement: str, not_after: str) -> None:
    path = root / "policies/data/agreements.json"
    document = json.loads(path.read_text())
    document[agreement]["not_after"] = not_after
    path.write_text(json.dumps(document))


def expiring(config: Path, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["policy", "expiring", "--config", str(config), *extra])
    return result.exit_code, result.stdout, result.stderr


def test_an_agreement_ending_is_listed_and_exits_0(site: Path) -> None:
    code, out, _ = expiring(site)
    assert code == 0, out
    assert f"ended or ending within 90 days of {_day(0)} (UTC)" in out
    assert "DSA-2026-021" in out and "ds-oncology-de" in out and "ending" in out
    code, out, _ = expiring(site, "--within-days", "39")
    assert code == 0 and "nothing has ended or ends within 39 days" in out


def test_an_agreement_ended_exits_1_and_prints_json(site: Path) -> None:
    set_end(site.parent, "DSA-2025-007", _day(-1))
    code, out, _ = expiring(site, "--json", "--within-days", "10")
    assert code == 1, out
    answer = json.loads(out)
    assert answer == {
        "today": _day(0),
        "within_days": 10,
        "items": [
            {"kind": "agreement", "id": "DSA-2025-007", "ends": _day(-1), "days_left": -1, "status": "ended",
             "affects": ["ds-diabetes-de"], "reason": None},
        ],
    }  # fmt: skip


@pytest.mark.parametrize("within", ["-1", "3651", "soon"])
def test_a_window_out_of_bounds_exits_2(site: Path, within: str) -> None:
    code, _, err = expiring(site, "--within-days", within)
    assert code == 2 and "--within-days" in err


def test_a_datasets_time_limit_is_read_while_a_gateway_holds_the_store(site: Path) -> None:
    publish(site.parent, "ds-diabetes-de", 1, dt.datetime.now(dt.UTC).date() + dt.timedelta(days=400))
    publish(site.parent, "ds-diabetes-de", 2, dt.datetime.now(dt.UTC).date() + dt.timedelta(days=20))
    publish(site.parent, "ds-unrecorded", 1, None)
    # A gateway holds the store open (read-only, as gateway.query.execute opens it).
    with store_engine(f"duckdb:///{site.parent / 'store.duckdb'}").connect():
        code, out, err = expiring(site, "--json", "--within-days", "30")
    assert code == 1, err  # a time limit without its end: the policy denies every query of that dataset
    items = {i["id"]: i for i in json.loads(out)["items"]}
    assert (items["ds-diabetes-de"]["status"], items["ds-diabetes-de"]["days_left"]) == ("ending", 20)
    assert items["ds-diabetes-de"]["affects"] == ["DSA-2025-007", "DSA-2026-014"]
    assert items["ds-unrecorded"]["status"] == "invalid"
    assert "consent_terms.use_until: missing" in items["ds-unrecorded"]["reason"]
    assert list(items) == ["ds-unrecorded", "ds-diabetes-de"]  # undated first; DSA-2026-021 is 40 days out


def test_a_store_that_cannot_be_read_exits_2_without_its_path(site: Path) -> None:
    (site.parent / "store.duckdb").unlink()
    code, _, err = expiring(site)
    assert code == 2 and "the site's store cannot be read" in err
    assert str(site.parent) not in err


def test_a_bad_config_or_policy_folder_exits_2(site: Path, tmp_path: Path) -> None:
    code, _, err = expiring(tmp_path / "missing.toml")
    assert code == 2 and "missing.toml" in err
    set_end(site.parent, "DSA-2026-021", "2027-02-30")
    code, _, err = expiring(site)
    assert code == 2
    assert "agreements.json: DSA-2026-021.not_after" in err and "not a day of the calendar" in err


def test_a_narrow_terminal_folds_the_ids_and_never_cuts_them_short(site: Path) -> None:
    set_end(site.parent, "DSA-2025-007", _day(-1))
    result = CliRunner().invoke(app, ["policy", "expiring", "--config", str(site)], env={"COLUMNS": "60"})
    assert result.exit_code == 1, result.stdout
    # Folded onto more lines, every character of each id is there; cut short, one would end in "…".
    assert "…" not in result.stdout and "DSA-202" in result.stdout
