"""bench/query_ab.py: two gateways that differ in the `[server]` lines given are served at once and compared.

docs/queries.md ("Running a site for throughput") chose the default switch interval from this script's
comparisons; a side whose lines did not reach its gateway's config, or blocks that were not all counted,
would make it compare a configuration with itself."""

from __future__ import annotations

import json

import pytest
from bench_script import run_bench


def _run(*args: str) -> tuple[int, str, str]:
    return run_bench("query_ab.py", *args)


@pytest.mark.slow
def test_both_sides_are_served_with_their_own_lines_and_every_block_counts() -> None:
    # 40 requests/s in blocks of 2 s, the first second not counted: 40 requests per side and block.
    code, out, err = _run(
        "--rate", "40", "--block", "2", "--rounds", "2", "--rows", "2000", "--workers", "2",
        "--a", "switch_interval_ms = 5", "--b", "switch_interval_ms = 10",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["a"] == ["switch_interval_ms = 5"] and result["b"] == ["switch_interval_ms = 10"]
    assert result["failed_requests"] == 0
    assert result["a_answered"] == result["b_answered"] == 80
    assert len(result["a_blocks_p99_ms"]) == len(result["b_blocks_p99_ms"]) == 2
    assert 0 <= result["rounds_a_lower_p99"] <= 2
    for side in ("a", "b"):
        assert 0 < result[f"{side}_p50_ms"] <= result[f"{side}_p90_ms"] <= result[f"{side}_p99_ms"]


def test_a_line_that_is_not_a_server_setting_stops_the_gateway_with_the_field() -> None:
    code, _, err = _run("--rows", "2000", "--rounds", "1", "--block", "2", "--a", "switch_interval_ms = 0.1")
    assert code != 0
    assert "switch_interval_ms" in err


def test_a_line_that_is_not_key_and_value_is_refused_before_anything_starts() -> None:
    code, _, err = _run("--a", "switch_interval_ms 5")
    assert code != 0
    assert "give one `key = value` line of the [server] table" in err
