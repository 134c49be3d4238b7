"""bench/query_waits.py: every query it serves is timed at each step inside the workers, and every commit.

docs/queries.md ("Where a small query's time goes") reports where a served query waits from this script; a
hooked function of the pipeline or the audit log that was renamed or is no longer called would leave a step
untimed, and the breakdown would silently lose it."""

from __future__ import annotations

import json

import pytest
from bench_script import run_bench

FIGURES = (
    "decide", "wait_pool", "pass", "run", "count", "wait_commit", "to_loop", "resume", "total",
    "commit_start", "commit", "lock_wait", "lock_hold", "client",
)  # fmt: skip


def _run(*args: str) -> tuple[int, str, str]:
    return run_bench("query_waits.py", *args)


@pytest.mark.slow
def test_every_served_query_is_timed_at_each_step() -> None:
    # 45 requests/s for 2.5 s: no request falls due exactly as the measured seconds end.
    code, out, err = _run("--rate", "45", "--seconds", "2.5", "--rows", "2000", "--workers", "2")
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failed_requests"] == 0
    assert result["answered"] >= 100
    # Every answered query of the measured seconds was timed at each step in the worker that served it.
    assert f"{result['answered']} queries timed in the workers" in out
    assert "not timed at every step" not in out
    assert {k.removesuffix("_p50_ms") for k in result if k.endswith("_p50_ms")} == set(FIGURES)
    # The worker's span of a request lies within what its client saw.
    assert result["total_p50_ms"] < result["client_p50_ms"]
    # Each commit carries at least one request's released entry, and each request writes four entries.
    assert result["commits_per_s"] > 0
    assert result["entries_per_commit"] >= 4


def test_one_worker_is_refused_with_the_reason() -> None:
    code, _, err = _run("--workers", "1")
    assert code == 2
    assert "--workers must be 2 or more" in err
