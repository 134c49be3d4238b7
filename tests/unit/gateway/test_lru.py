"""LruMap: bounded, and the entry forgotten first is the one least recently read or written."""

from __future__ import annotations

from gateway.lru import LruMap


def test_the_least_recently_used_entry_goes_first() -> None:
    kept = LruMap[str, int](2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # "b" is now the least recently used
    kept.put("c", 3)
    assert len(kept) == 2
    assert kept.get("b") is None
    assert (kept.get("a"), kept.get("c")) == (1, 3)


def test_writing_a_kept_key_replaces_its_value_without_growing() -> None:
    kept = LruMap[str, int](2)
    kept.put("a", 1)
    kept.put("a", 5)
    assert len(kept) == 1
    assert kept.get("a") == 5
    kept.clear()
    assert len(kept) == 0
    assert kept.get("a") is None
