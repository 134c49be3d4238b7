"""Every bench/ script starts as `make bench` runs it (`python bench/<name>.py`, the script's own folder first
on the import path, where bench/audit.py would shadow the `audit` package), and the policy benchmark's
figures come out as its last line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_script import run_bench

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_script_starts_from_its_folder(script: str) -> None:
    code, out, err = run_bench(script, "--help", timeout_s=120)
    assert code == 0, err[-2000:]
    assert out.startswith("usage:"), out[:500]
    assert script in out


def test_policy_benchmark_prints_its_figures() -> None:
    code, out, err = run_bench("policy.py", "--iterations", "100", timeout_s=240)
    assert code == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert "100 decisions, thread CPU time" in out
    figures = json.loads(lines[-1])
    assert set(figures) == {"p50_us", "p99_us"}
    assert 0 < figures["p50_us"] <= figures["p99_us"]
