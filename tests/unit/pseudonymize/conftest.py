"""Factories for the pseudonymization tests: a master key, a small synthetic source, the example spec."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.synth import generate_site
from pseudonymize.keys import SecretKey

EXAMPLE_SPEC = Path(__file__).resolve().parents[3] / "examples" / "cohort.spec.yaml"


@pytest.fixture
def master_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def master(master_key_file: Path) -> SecretKey:
    return SecretKey.from_file(master_key_file)


@pytest.fixture(scope="session")
def cohort_table() -> pa.Table:
    """3,000 synthetic patients of the first site (DE)."""
    return generate_site(0, 3000, 11)


@pytest.fixture
def cohort_parquet(tmp_path: Path, cohort_table: pa.Table) -> Path:
    path = tmp_path / "patients.parquet"
    pq.write_table(cohort_table, path, row_group_size=1000)
    return path


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "cohort.spec.yaml"
    shutil.copy(EXAMPLE_SPEC, path)
    return path
