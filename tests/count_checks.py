"""A check shared by the tests of the identical-query count."""

from __future__ import annotations


def assert_counted_once_each(totals: list[int]) -> None:
    """What askings at once must see: each at least its own place in the order they were counted (one
    asking may also see another counted at the same moment), so no more than `n` of them ever see a total
    of `n` or less, and a limit of `n` answers `n` at most."""
    ordered = sorted(totals)
    assert all(total >= place for place, total in enumerate(ordered, start=1)), ordered
    assert ordered[-1] == len(totals)  # the last counted sees every one, and none sees more
    for limit in range(1, len(totals) + 1):
        assert sum(total <= limit for total in totals) <= limit
