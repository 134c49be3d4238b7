"""`fedgate catalog` and `fedgate ingest` on a DuckDB store another process holds open, as a serving
gateway (read-only) or a running ingest (to write) does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.settings import load_settings
from gateway.synth import generate_site

ROOT = Path(__file__).resolve().parents[3]
_HOLD = (
    "import sys, duckdb\n"
    "con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro')\n"
    "print('holding', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    pq.write_table(generate_site(0, 3000, 5), tmp_path / "patients.parquet")
    config = tmp_path / "examples/site-de/site.toml"
    assert invoke("keygen", "--config", str(config)).exit_code == 0
    assert invoke("audit", "keygen", "--config", str(config)).exit_code == 0
    published = ingest(config)
    assert published.exit_code == 0, published.output
    return config


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def ingest(config: Path):  # type: ignore[no-untyped-def]
    return invoke(
        "ingest", "--config", str(config), "--dataset", "cohort",
        "--spec", str(config.parents[1] / "cohort.spec.yaml"),
        "--source", str(config.parents[2] / "patients.parquet"),
    )  # fmt: skip


@contextmanager
def held(config: Path, *, read_only: bool) -> Iterator[int]:
    """Another process holding the site's DuckDB store open (read-only as a gateway does); its PID."""
    store = load_settings(config).store_url.removeprefix("duckdb:///")
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, store, "ro" if read_only else "rw"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "holding"
        yield process.pid
    finally:
        process.communicate(timeout=30)


def test_catalog_lists_the_store_while_a_gateway_holds_it_open(site: Path) -> None:
    with held(site, read_only=True):
        result = invoke("catalog", "--config", str(site), "--json")
        table = invoke("catalog", "--config", str(site))
    assert result.exit_code == 0, result.output
    assert [(e["dataset"], e["version"]) for e in json.loads(result.output)] == [("cohort", 1)]
    assert table.exit_code == 0 and "cohort" in table.output


def test_ingest_while_a_gateway_holds_the_store_says_what_to_do(site: Path) -> None:
    with held(site, read_only=True) as pid:
        result = ingest(site)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert (
        f"the store file is open in another process (a running `fedgate serve`? PID {pid}): a DuckDB store "
        "is written by one process at a time; stop the gateway to publish, or use a PostgreSQL store"
    ) in message
    # DuckDB's own text names the file again and the other program: neither is repeated.
    assert "Conflicting lock" not in message and "python" not in message
    assert message.count("store.duckdb") == 1
    # Once the gateway has let go, the same ingest publishes.
    assert ingest(site).exit_code == 0


def test_catalog_while_an_ingest_writes_the_store_says_so(site: Path) -> None:
    with held(site, read_only=False) as pid:
        result = invoke("catalog", "--config", str(site))
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"being written by another process (a running `fedgate ingest`? PID {pid})" in message
    assert "Conflicting lock" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('IO Error: Could not set lock on file "/x/s.duckdb": Conflicting lock is held in /bin/py (PID 42). '
         "However, you would be able to open this database in read-only mode", "42"),
        ('IO Error: Could not set lock on file "/x/s.duckdb": Conflicting lock is held', ""),
        ("IO Error: Cannot open file /x/s.duckdb: Permission denied", None),
    ],
)  # fmt: skip
def test_the_holder_of_a_store_lock_is_read_from_duckdb_s_message(text: str, expected: str | None) -> None:
    from pseudonymize.store import lock_holder

    assert lock_holder(Exception(text)) == expected
