"""The decision point on the event loop: reloads and decisions that wait on the network run on a thread, so
the loop keeps serving; concurrent requests share one reload; a change that cannot be loaded denies without
being loaded again for every request."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import policy_settings
from test_decision_decide import POLICIES, REQUEST

from gateway.decision import DecisionInput, PolicyBundle, PolicyDecisionPoint, point
from gateway.decision.embedded import EmbeddedEngine

SLOW_S = 0.3


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(POLICIES, tmp_path / "policies")
    return tmp_path / "policies"


def _expire_agreement(folder: Path, not_after: str) -> None:
    """Another process of the site replaces the policy data and announces it, as policy_admin does."""
    agreements = folder / "data" / "agreements.json"
    doc = json.loads(agreements.read_text())
    doc["DSA-2026-014"]["not_after"] = not_after
    agreements.write_text(json.dumps(doc))
    point.mark_generation(point.generation_marker(folder))


class _Loads:
    """load_bundle, slowed down, recording the threads it ran on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[int] = []
        real = point.load_bundle

        def slow(*args: Any, **kwargs: Any) -> PolicyBundle:
            self.threads.append(threading.get_ident())
            time.sleep(SLOW_S)
            return real(*args, **kwargs)

        monkeypatch.setattr(point, "load_bundle", slow)


async def _ticks_while(work: Any) -> tuple[Any, int]:
    """Run `work` and count how often the loop could run a 10 ms ticker meanwhile."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        done = True
        await task
    return result, ticks


def test_a_change_is_loaded_on_a_thread_while_the_loop_serves(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdp = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    assert pdp.decide(DecisionInput.model_validate(REQUEST)).decision == "allow"
    loads = _Loads(monkeypatch)
    _expire_agreement(folder, "2026-04-30")

    async def scenario() -> tuple[Any, int, int]:
        loop_thread = threading.get_ident()
        decision, ticks = await _ticks_while(pdp.decide_soon(DecisionInput.model_validate(REQUEST)))
        return decision, ticks, loop_thread

    decision, ticks, loop_thread = asyncio.run(scenario())
    assert decision.decision == "deny"
    assert decision.reasons == ("DSA-2026-014 expired on 2026-04-30",)
    assert len(loads.threads) == 1 and loads.threads[0] != loop_thread
    # The loop ran its ticker through the reload (about SLOW_S / 10 ms times on an idle machine); held up
    # by a reload in line, it could not have run it at all.
    assert ticks >= 3


def test_requests_arriving_during_a_reload_share_it(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdp = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    loads = _Loads(monkeypatch)
    _expire_agreement(folder, "2026-04-30")

    async def scenario() -> list[Any]:
        return list(
            await asyncio.gather(*(pdp.decide_soon(DecisionInput.model_validate(REQUEST)) for _ in range(8)))
        )

    decisions = asyncio.run(scenario())
    assert len(loads.threads) == 1
    # None of them was decided with the bundle the change replaced.
    assert {d.reasons for d in decisions} == {("DSA-2026-014 expired on 2026-04-30",)}


def test_a_change_that_cannot_be_loaded_denies_without_loading_it_for_every_request(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdp = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    loads = _Loads(monkeypatch)
    _expire_agreement(folder, "2026-13-01")

    async def three() -> list[Any]:
        return [await pdp.decide_soon(DecisionInput.model_validate(REQUEST)) for _ in range(3)]

    decisions = asyncio.run(three())
    assert [d.decision for d in decisions] == ["deny"] * 3
    assert all("could not be loaded" in d.reasons[0] for d in decisions)
    assert len(loads.threads) == 1
    # A new change (the steward's fix) is loaded at once.
    _expire_agreement(folder, "2026-12-31")
    fixed = asyncio.run(pdp.decide_soon(DecisionInput.model_validate(REQUEST)))
    assert fixed.decision == "allow"
    assert len(loads.threads) == 2


def test_the_same_failed_change_is_tried_again_after_a_while(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdp = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    loads = _Loads(monkeypatch)
    monkeypatch.setattr(point, "RETRY_FAILED_RELOAD_S", 0.0)
    _expire_agreement(folder, "2026-13-01")
    assert not pdp.current()
    assert not pdp.current()
    assert len(loads.threads) == 2


class SlowNetworkEngine:
    """Test double of an engine that waits on the network (the OPA server's path): the real embedded engine's
    answers, each after a wait, recording the thread that asked."""

    name = "opa"

    def __init__(self, inner: EmbeddedEngine) -> None:
        self.inner = inner
        self.threads: list[int] = []

    @property
    def bundle_digest(self) -> str:
        return self.inner.bundle_digest

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        self.threads.append(threading.get_ident())
        time.sleep(SLOW_S)
        return self.inner.evaluate(policy_input)

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        self.inner.replace_bundle(bundle)


def test_a_decision_that_waits_on_the_network_leaves_the_loop_free(folder: Path, tmp_path: Path) -> None:
    settings = policy_settings(folder, tmp_path)
    engine = SlowNetworkEngine(EmbeddedEngine(point.load_bundle(folder, "DE")))
    pdp = PolicyDecisionPoint(settings, engine=engine)

    async def scenario() -> tuple[Any, int, int]:
        decision, ticks = await _ticks_while(pdp.decide_soon(DecisionInput.model_validate(REQUEST)))
        return decision, ticks, threading.get_ident()

    decision, ticks, loop_thread = asyncio.run(scenario())
    assert decision.decision == "allow"
    assert engine.threads and engine.threads[0] != loop_thread
    assert ticks >= 3


def test_the_embedded_engine_decides_on_the_loop_itself(folder: Path, tmp_path: Path) -> None:
    pdp = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    seen: list[int] = []
    evaluate = pdp.evaluate

    def recording(request: DecisionInput) -> Any:
        seen.append(threading.get_ident())
        return evaluate(request)

    pdp.evaluate = recording  # type: ignore[method-assign]

    async def scenario() -> int:
        await pdp.decide_soon(DecisionInput.model_validate(REQUEST))
        return threading.get_ident()

    assert seen == [] and [asyncio.run(scenario())] == seen


def test_a_change_announced_during_a_reload_is_loaded_before_a_later_request_decides(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdp = PolicyDecisionPoint(policy_settings(folder, tmp_path))
    real = point.load_bundle
    read = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> PolicyBundle:
        bundle = real(*args, **kwargs)  # the folder as it is now...
        read.set()
        time.sleep(SLOW_S)  # ...then compiled or published slowly
        return bundle

    monkeypatch.setattr(point, "load_bundle", slow)
    _expire_agreement(folder, "2026-12-31")  # a first change: the agreement still runs

    async def scenario() -> Any:
        first = asyncio.ensure_future(pdp.decide_soon(DecisionInput.model_validate(REQUEST)))
        await asyncio.to_thread(read.wait)
        _expire_agreement(folder, "2026-04-30")  # a second change, announced while the first loads
        later = await pdp.decide_soon(DecisionInput.model_validate(REQUEST))
        await first
        return later

    later = asyncio.run(scenario())
    assert later.reasons == ("DSA-2026-014 expired on 2026-04-30",)
