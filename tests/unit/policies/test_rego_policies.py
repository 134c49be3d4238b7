"""Runs the shipped Rego test twins through `fedgate policy test`, so policy tests run in CI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FEDGATE = [sys.executable, "-m", "gateway"]


def _policy_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDGATE, "policy", "test", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_every_shipped_rego_test_passes() -> None:
    run = _policy_test("policies")
    assert run.returncode == 0, run.stdout + run.stderr
    passed = re.findall(r"^data\.fedgate\.\w+_test\.test_\w+: PASS", run.stdout, re.MULTILINE)
    assert len(passed) >= 60
    assert f"PASS: {len(passed)}/{len(passed)}" in run.stdout
    packages = {line.split(".")[2] for line in passed}
    assert {"consent_test", "transfer_test", "agreement_test", "decision_test", "lib_test"} <= packages


def test_a_broken_clause_fails_its_tests(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    agreement = policies / "agreement" / "agreement.rego"
    # An expiry check that can never fire: the kind of slip the test twins exist to catch.
    source = agreement.read_text()
    expiry = "\tdata.fedgate.lib.today > _dsa.not_after\n"
    assert expiry in source
    agreement.write_text(source.replace(expiry, '\tdata.fedgate.lib.today > "9999-12-31"\n'))
    run = _policy_test(str(policies), "--quiet")
    assert run.returncode == 1
    assert "data.fedgate.agreement_test.test_deny_when_dsa_expired: FAIL" in run.stdout
    assert re.search(r"^FAIL: \d+/\d+$", run.stdout, re.MULTILINE)
    assert ": PASS (" not in run.stdout  # --quiet prints failures only


def test_coverage_report_is_printed() -> None:
    run = _policy_test("policies", "--quiet", "--coverage")
    assert run.returncode == 0, run.stderr
    assert "COVERAGE REPORT:" in run.stdout
    assert "consent/consent.rego" in run.stdout


def test_invalid_policy_data_is_a_clear_error(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    (policies / "data" / "site.json").write_text("[]")
    run = _policy_test(str(policies))
    assert run.returncode == 2
    assert "site.json" in run.stderr and "Traceback" not in run.stderr


def test_a_folder_without_tests_fails() -> None:
    run = _policy_test(str(ROOT / "policies" / "data"))
    assert run.returncode == 2
    assert "no .rego policy files" in run.stderr
