"""Rewriting the policies for speed must not change a decision: every answer matches the recorded one.

decision_golden.json holds the decision, reasons and obligations for the 250-request corpus and for the
benchmark's 1,000 requests plus 600 variations over its 200 agreements, recorded before the policies were
rewritten for speed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from decision_golden import GOLDEN, current_records


@pytest.fixture(scope="module")
def records() -> dict[str, list[list[Any]]]:
    return current_records()


@pytest.fixture(scope="module")
def golden() -> dict[str, list[list[Any]]]:
    recorded: dict[str, list[list[Any]]] = json.loads(GOLDEN.read_text())
    return recorded


@pytest.mark.parametrize("mix", ["corpus", "bench"])
def test_every_decision_matches_the_recorded_one(
    mix: str, records: dict[str, list[list[Any]]], golden: dict[str, list[list[Any]]]
) -> None:
    assert len(records[mix]) == len(golden[mix])
    for n, (now, then) in enumerate(zip(records[mix], golden[mix], strict=True)):
        assert now == then, f"{mix} request {n}"


def test_the_recorded_mixes_reach_every_outcome(golden: dict[str, list[list[Any]]]) -> None:
    for mix in ("corpus", "bench"):
        outcomes = {decision for decision, _, _ in golden[mix]}
        assert outcomes == {"allow", "deny", "needs_approval"}, mix
        failed = [r for _, reasons, _ in golden[mix] for r in reasons if r.startswith("policy evaluation")]
        assert not failed, mix
