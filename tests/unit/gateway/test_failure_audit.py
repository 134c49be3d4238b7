"""The bounded audit of unauthenticated failures: a burst written one by one, then a rate; every failure
counted in exactly one entry (1 + `suppressed`), held-back ones written once the rate allows or at close."""

from __future__ import annotations

import asyncio

import pytest

from gateway.failure_audit import MAX_KINDS, OTHER, FailureAudit, Write


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Entries:
    """What the audit would hold: (kind, written for a held-back failure, suppressed)."""

    def __init__(self) -> None:
        self.written: list[tuple[str, bool, int]] = []

    def writers(self, kind: str) -> tuple[Write, Write]:
        async def write(suppressed: int) -> None:
            self.written.append((kind, False, suppressed))

        async def write_held(suppressed: int) -> None:
            self.written.append((kind, True, suppressed))

        return write, write_held

    def failures(self, kind: str) -> int:
        return sum(1 + s for k, _, s in self.written if k == kind)


def test_a_burst_is_written_then_the_rest_is_counted_in_the_next_entry() -> None:
    async def main() -> None:
        clock, entries = Clock(), Entries()
        audit = FailureAudit(rate_per_s=2.0, burst=3, clock=clock)
        for _ in range(10):
            await audit.record(("bad-token",), *entries.writers("bad-token"))
        assert entries.written == [("bad-token", False, 0)] * 3
        clock.now += 0.5  # one token back
        await audit.record(("bad-token",), *entries.writers("bad-token"))
        assert entries.written[-1] == ("bad-token", False, 7)
        assert entries.failures("bad-token") == 11
        await audit.aclose()

    asyncio.run(main())


def test_held_back_failures_are_written_once_the_rate_allows_without_another_failure() -> None:
    async def main() -> None:
        entries = Entries()
        audit = FailureAudit(rate_per_s=20.0, burst=2)
        for _ in range(7):
            await audit.record(("unknown-route",), *entries.writers("unknown-route"))
        assert len(entries.written) == 2
        await asyncio.sleep(0.2)  # a token comes back after 0.05 s
        assert entries.written[-1] == ("unknown-route", True, 4)  # stands for one of the five, counts four
        assert entries.failures("unknown-route") == 7
        await audit.aclose()
        assert len(entries.written) == 3

    asyncio.run(main())


def test_close_writes_what_is_held_back() -> None:
    async def main() -> None:
        clock, entries = Clock(), Entries()
        audit = FailureAudit(rate_per_s=0.001, burst=1, clock=clock)
        for _ in range(5):
            await audit.record(("a",), *entries.writers("a"))
        await audit.record(("b",), *entries.writers("b"))
        await audit.aclose()
        assert entries.failures("a") == 5 and entries.failures("b") == 1
        assert entries.written[-1] == ("a", True, 3)

    asyncio.run(main())


def test_kinds_are_bounded_by_kind_not_by_failure() -> None:
    async def main() -> None:
        clock, entries = Clock(), Entries()
        audit = FailureAudit(rate_per_s=0.001, burst=1, clock=clock)
        for i in range(MAX_KINDS + 50):
            await audit.record(("route", str(i)), *entries.writers("many"))
        # Each of the first MAX_KINDS kinds wrote its one entry; the rest share one bucket, which wrote one.
        assert len(entries.written) == MAX_KINDS + 1
        assert ("route", OTHER) in audit._buckets and len(audit._buckets) == MAX_KINDS + 1
        await audit.aclose()
        assert entries.failures("many") == MAX_KINDS + 50
        # Another event type's kinds beyond the bound do not share that bucket.
        await audit.record(("other event", "x"), *entries.writers("other"))
        assert entries.written[-1] == ("other", False, 0)

    asyncio.run(main())


def test_a_failed_write_of_held_back_failures_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def broken(_: int) -> None:
            raise OSError("disk full /secret/path")

        audit = FailureAudit(rate_per_s=0.001, burst=1)
        entries = Entries()
        await audit.record(("k",), *entries.writers("k"))
        await audit.record(("k",), broken, broken)
        await audit.aclose()

    asyncio.run(main())
    assert "held-back failures could not be audited (OSError)" in caplog.text
    assert "/secret/path" not in caplog.text
