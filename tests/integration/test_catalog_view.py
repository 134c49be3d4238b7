"""The gateway's catalog view answers a lookup from the read it holds while the next read runs on a thread
of its own, so no query waits for the store's catalog on the event loop; a read older than `max_stale_s`
is waited for, and a failed read neither replaces the held one nor hides its error for long."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest
from gateway_site import Site

from gateway.catalog import CatalogView
from gateway.query.execute import store_engine
from pseudonymize.store import CatalogEntry

Read = Callable[[], list[CatalogEntry]]


class GatedRead:
    """The view's real store read, held back until the test opens the gate, then with every version one
    higher (as if a new version had been published meanwhile)."""

    def __init__(self, read: Read, *, opened: bool = False, fails: bool = False) -> None:
        self._read = read
        self.gate = threading.Event()
        if opened:
            self.gate.set()
        self.fails = fails
        self.started = 0
        self.entered = threading.Event()
        self.finished = threading.Event()

    def __call__(self) -> list[CatalogEntry]:
        self.started += 1
        self.entered.set()
        try:
            assert self.gate.wait(timeout=30), "the test never opened the gate"
            if self.fails:
                raise OSError("the store is unreachable")
            return [dataclasses.replace(e, version=e.version + 1) for e in self._read()]
        finally:
            self.finished.set()


def _call_within(call: Callable[[], object], seconds: float) -> tuple[bool, object]:
    """(whether `call` returned within `seconds`, what it returned)."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    return (not thread.is_alive(), box[0] if box else None)


def _view(site: Site, ttl_s: float, max_stale_s: float) -> tuple[CatalogView, int]:
    view = CatalogView(store_engine(site.settings.store_url), ttl_s=ttl_s, max_stale_s=max_stale_s)
    held = view.latest("cohort")
    assert held is not None
    return view, held.version


def test_a_stale_lookup_answers_from_the_held_read_while_the_next_read_runs(
    tmp_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    view, version = _view(tmp_site, ttl_s=0.05, max_stale_s=60)
    read = GatedRead(view._read)
    monkeypatch.setattr(view, "_read", read)
    time.sleep(0.1)

    answered, entry = _call_within(lambda: view.latest("cohort"), 5)
    assert answered, "the lookup waited for the store's catalog"
    assert isinstance(entry, CatalogEntry) and entry.version == version
    assert read.entered.wait(timeout=10)
    for _ in range(5):
        assert view.latest("cohort").version == version  # type: ignore[union-attr]
    assert read.started == 1  # one read at a time, however many lookups find the view stale

    read.gate.set()
    assert read.finished.wait(timeout=10)
    deadline = time.monotonic() + 10
    while view.latest("cohort").version == version and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    assert view.latest("cohort").version == version + 1  # type: ignore[union-attr]


def test_a_read_older_than_max_stale_is_waited_for(tmp_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    view, version = _view(tmp_site, ttl_s=0.01, max_stale_s=0.05)
    read = GatedRead(view._read, opened=True)
    monkeypatch.setattr(view, "_read", read)
    time.sleep(0.2)
    assert view.latest("cohort").version == version + 1  # type: ignore[union-attr]
    assert read.started == 1


def test_a_failed_read_keeps_the_held_one_and_its_error_surfaces_once_that_is_too_old(
    tmp_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    view, version = _view(tmp_site, ttl_s=0.05, max_stale_s=3.0)
    read = GatedRead(view._read, opened=True, fails=True)
    monkeypatch.setattr(view, "_read", read)
    time.sleep(0.1)
    assert view.latest("cohort").version == version  # type: ignore[union-attr]
    assert read.finished.wait(timeout=10)
    time.sleep(3.0)
    with pytest.raises(OSError, match="unreachable"):
        view.latest("cohort")


def test_a_fresh_lookup_reads_now(tmp_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    view, version = _view(tmp_site, ttl_s=60, max_stale_s=60)
    read = GatedRead(view._read, opened=True)
    monkeypatch.setattr(view, "_read", read)
    assert view.latest("cohort").version == version  # type: ignore[union-attr]
    assert view.latest("cohort", fresh=True).version == version + 1  # type: ignore[union-attr]
    assert read.started == 1
