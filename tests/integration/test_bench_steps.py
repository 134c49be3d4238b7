"""bench/query_steps.py: every step it names is timed, and each part stays within the whole it belongs to.

docs/queries.md ("Performance") reports its figures; a step whose wrapped function was renamed or is no
longer called would print nothing, or zero, and the breakdown would silently lose a part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = {
    "framework", "event_loop", "pool_thread", "decision", "store_run", "disclosure", "query_count", "compile",
    "audit_entries", "canonical_json",
}  # fmt: skip


@pytest.mark.slow
def test_every_step_is_timed_within_its_thread() -> None:
    command = [sys.executable, str(ROOT / "bench/query_steps.py"), "--requests", "30", "--rounds", "2"]
    run = subprocess.run([*command, "--warmup", "5"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures) == STEPS
    assert all(us > 0 for us in figures.values()), figures
    # One line per round before the medians.
    assert sum("(µs per request)" in line for line in lines) == 2
    # The framework's share is part of a request's event-loop time, as the decision is; the store's run,
    # disclosure control, the count and the compile all happen in the pool thread's step.
    assert figures["framework"] < figures["event_loop"]
    assert figures["decision"] < figures["event_loop"]
    pool_parts = ("store_run", "disclosure", "query_count", "compile")
    assert sum(figures[step] for step in pool_parts) < figures["pool_thread"]
    assert "leaked" not in run.stderr
