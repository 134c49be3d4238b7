"""bench/query_waits.py: every query it serves is timed at each step inside the workers, and the steps add up.

docs/queries.md ("Performance") reports where a served query waits from this script; a hooked function of
the pipeline that was renamed or is no longer called would leave a step untimed, and the breakdown would
silently lose it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "decide", "wait_pool", "pass", "run", "wait_commit", "to_loop", "resume", "total",
    "lock_wait", "lock_hold", "count", "commit_start", "commit", "client",
)  # fmt: skip


@pytest.mark.slow
def test_every_served_query_is_timed_at_each_step() -> None:
    command = [sys.executable, str(ROOT / "bench/query_waits.py"), "--rate", "40", "--seconds", "3"]
    run = subprocess.run([*command, "--rows", "2000"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["failed_requests"] == 0
    assert result["answered"] == 120  # 40 requests/s for 3 s
    # Every answered query was timed in the worker that served it, and only those of the measured phase.
    assert f"{result['answered']} queries timed in the workers" in run.stdout
    assert {k.removesuffix("_p50_ms") for k in result if k.endswith("_p50_ms")} == set(FIGURES)
    assert all(result[f"{name}_p50_ms"] >= 0 for name in FIGURES)
    assert all(result[f"{name}_p99_ms"] >= result[f"{name}_p50_ms"] for name in FIGURES)
    # The run is part of its pass; every step is part of the request's time in the worker, which is part of
    # what its client saw; one lock hold at least per commit.
    assert result["run_p50_ms"] <= result["pass_p50_ms"]
    assert result["count_p50_ms"] <= result["pass_p50_ms"]
    steps = ("decide", "wait_pool", "pass", "wait_commit", "to_loop", "resume")
    assert max(result[f"{s}_p50_ms"] for s in steps) <= result["total_p50_ms"]
    assert result["total_p50_ms"] < result["client_p50_ms"]
    assert result["lock_hold_p50_ms"] > 0
    assert result["taken_mean"] >= 1
    assert result["full_collections"] >= 0 and result["longest_collection_ms"] >= 0
    # A request's four entries and the commits that wrote them.
    assert result["commits_per_s"] > 0 and result["entries_per_commit"] >= 1
    assert result["lock_hold_p50_ms"] <= result["commit_p50_ms"]
    assert "garbage collections:" in run.stdout
