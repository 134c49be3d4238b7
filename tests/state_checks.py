"""Checks shared by the tests of the gateway's state database."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.state import GatewayState


def assert_counted_once_each(totals: list[int]) -> None:
    """What askings at once must see: each at least its own place in the order they were counted (one
    asking may also see another counted at the same moment), so no more than `n` of them ever see a total
    of `n` or less, and a limit of `n` answers `n` at most."""
    ordered = sorted(totals)
    assert all(total >= place for place, total in enumerate(ordered, start=1)), ordered
    assert ordered[-1] == len(totals)  # the last counted sees every one, and none sees more
    for limit in range(1, len(totals) + 1):
        assert sum(total <= limit for total in totals) <= limit


@contextmanager
def another_worker_holding_the_turn(tmp_path: Path) -> Iterator[tuple[GatewayState, Callable[[], None]]]:
    """A state on a new file while another worker holds the writers' turn (flock on its own open file of
    the lock beside it); the function given lets go of it."""
    state = GatewayState(f"sqlite:///{tmp_path / 'state.db'}")
    other = os.open(tmp_path / "state.db-writer.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    held = True

    def let_go() -> None:
        nonlocal held
        if held:
            fcntl.flock(other, fcntl.LOCK_UN)
            held = False

    try:
        yield state, let_go
    finally:
        let_go()
        os.close(other)
        state.close()
