"""The release hop's one event-loop future: settled from another thread by a result or an error, and left
alone once its request was cancelled (a client that went away)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway.pipeline import _settle


async def _settled_from_a_thread(value: Any, exc: BaseException | None) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Any] = loop.create_future()
    thread = threading.Thread(target=lambda: loop.call_soon_threadsafe(_settle, answer, value, exc))
    thread.start()
    thread.join()
    await asyncio.sleep(0)  # let the loop run the callback
    return answer


def test_a_result_from_another_thread_reaches_the_awaiting_request() -> None:
    answer = asyncio.run(_settled_from_a_thread({"rows": 2}, None))
    assert answer.result() == {"rows": 2}


def test_an_error_from_another_thread_is_raised_to_the_awaiting_request() -> None:
    answer = asyncio.run(_settled_from_a_thread(None, RuntimeError("commit failed")))
    with pytest.raises(RuntimeError, match="commit failed"):
        answer.result()


def test_a_cancelled_request_is_left_alone() -> None:
    async def main() -> asyncio.Future[Any]:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.cancel()
        _settle(answer, {"rows": 2}, None)  # would raise InvalidStateError on a cancelled future
        _settle(answer, None, RuntimeError("late"))
        return answer

    assert asyncio.run(main()).cancelled()
