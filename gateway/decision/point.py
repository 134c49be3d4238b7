"""The site's policy decision point: current bundle and engine; a failed reload keeps the last good one."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

from gateway.decision.bundle import PolicyBundle, load_bundle
from gateway.decision.decide import decide
from gateway.decision.embedded import EmbeddedEngine, TreeWalkingEngine
from gateway.decision.engine import PolicyEngine, make_engine
from gateway.decision.models import Decision, DecisionInput
from gateway.settings import SiteSettings

log = logging.getLogger(__name__)

RETRY_FAILED_RELOAD_S = 1.0
"""How soon a change that could not be loaded is tried again when nothing has changed since (an OPA server
that refused the upload may take it later), and how often an engine out of step with the bundle (an OPA
server that restarted empty) is given it again; a new change is tried at once."""


class PolicyDecisionPoint:
    """Loads the site's bundle at start (raising PolicyLoadError on a bad one) and decides requests."""

    def __init__(self, settings: SiteSettings, engine: PolicyEngine | None = None) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._marker = generation_marker(settings.policy_dir)
        self._seen = _stamp(self._marker)
        self._failed: tuple[tuple[int, int] | None, float] | None = None
        self._resynced = 0.0
        self._reloading: asyncio.Future[bool] | None = None
        self._bundle = load_bundle(settings.policy_dir, settings.jurisdiction)
        self._engine = engine if engine is not None else make_engine(settings, self._bundle)

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    @property
    def engine(self) -> PolicyEngine:
        return self._engine

    def decide(self, request: DecisionInput) -> Decision:
        """Fail-closed decision with the current bundle: the folder's, should another process of the site
        (a worker of `fedgate serve`) have replaced its policy data since this one loaded it."""
        if not self.current():
            return self._not_loaded()
        return self.evaluate(request)

    def evaluate(self, request: DecisionInput) -> Decision:
        """The engine's fail-closed decision with the bundle this point holds, whatever the folder says."""
        return decide(self._engine, request)

    def _not_loaded(self) -> Decision:
        return Decision.failed("the site's policy changed and could not be loaded", self._bundle.digest)

    async def decide_soon(self, request: DecisionInput) -> Decision:
        """`decide` for a caller on the event loop, which keeps serving meanwhile: a reload of the policy
        folder runs on a thread, and so does a decision that waits on the network (an OPA server, up to its
        timeout). The embedded engine decides in line: it answers in about a millisecond, as long as the
        hop to a thread and back would take."""
        if not await self.current_soon():
            return self._not_loaded()
        if isinstance(self._engine, EmbeddedEngine | TreeWalkingEngine):
            return self.evaluate(request)
        return await asyncio.to_thread(self.evaluate, request)

    def current(self) -> bool:
        """Load the policy folder again if another process of the site changed it since; False when that
        change cannot be loaded here (the caller must then not act on the bundle it holds)."""
        stamp = _stamp(self._marker)
        if stamp == self._seen:
            if self._in_step():
                return True
            # The engine lost the bundle (an OPA server restarted empty, a publish failed half-way): give
            # it the bundle again. Until that works, its own answers deny, saying what failed.
            try:
                self.reload()
            except Exception as exc:  # noqa: BLE001 - the engine's own answers say what failed
                log.warning("the policy engine could not be given the bundle again (%s)", type(exc).__name__)
            return True
        failed = self._failed
        if failed is not None and failed[0] == stamp and time.monotonic() - failed[1] < RETRY_FAILED_RELOAD_S:
            return False  # the same change failed a moment ago: not loaded again for every request
        try:
            self.reload()
        except Exception as exc:  # noqa: BLE001 - a change this process cannot load denies, never ignored
            self._failed = (stamp, time.monotonic())
            log.error("the site's policy changed and could not be loaded here (%s)", type(exc).__name__)
            return False
        self._failed = None
        return True

    async def current_soon(self) -> bool:
        """`current` for a caller on the event loop: a reload (reading and compiling the bundle, publishing
        it to an OPA server) runs on a thread, and the requests that arrive meanwhile wait for that one
        reload instead of each starting their own."""
        loop = asyncio.get_running_loop()
        while not (_stamp(self._marker) == self._seen and self._in_step()):
            reloading = self._reloading
            if reloading is None or reloading.done() or reloading.get_loop() is not loop:
                reloading = self._reloading = asyncio.ensure_future(asyncio.to_thread(self.current))
            # A caller that is cancelled (its client left) does not cancel the reload the others wait for.
            if not await asyncio.shield(reloading):
                return False
            # A change announced after that reload read the folder is loaded too before this caller
            # decides: it may have asked after the change, which no earlier bundle covers.
        return True

    def _in_step(self) -> bool:
        """Whether the engine decides with this point's bundle, as far as it knows; an engine out of step
        counts as in step again until RETRY_FAILED_RELOAD_S after the last attempt to give it the bundle."""
        if getattr(self._engine, "in_sync", True):
            return True
        return time.monotonic() - self._resynced < RETRY_FAILED_RELOAD_S

    def reload(self) -> PolicyBundle:
        """Load the policy folder again and switch to it; return the bundle now in use.

        An invalid bundle raises PolicyLoadError; an OPA server that refuses the upload raises
        PolicyEngineUnavailable. Either way this point keeps its last good bundle (an OPA server left
        half-updated answers with a digest this point does not expect, so its decisions deny).
        """
        with self._lock:
            self._resynced = time.monotonic()
            seen = _stamp(self._marker)
            bundle = load_bundle(self._settings.policy_dir, self._settings.jurisdiction)
            # An OPA server whose last publish failed holds part of a bundle: publish again, even the same.
            if bundle.digest != self._bundle.digest or not getattr(self._engine, "in_sync", True):
                self._engine.replace_bundle(bundle)
                if bundle.digest == self._bundle.digest:
                    log.info("policy bundle %s given to the engine again", bundle.short_digest)
                else:
                    log.info("policy bundle %s replaced %s", bundle.short_digest, self._bundle.short_digest)
                self._bundle = bundle
            self._seen = seen
            return bundle

    def changed(self) -> None:
        """Tell the site's processes, this one included, that the policy folder changed: each loads it
        again before its next decision (call it after writing the folder, before reloading here)."""
        mark_generation(self._marker)


def generation_marker(policy_dir: Path) -> Path:
    """The file whose change tells every process of a site to load its policy folder again."""
    return policy_dir / "data" / ".generation"


def mark_generation(marker: Path) -> None:
    """Write a new generation (atomically: a temporary file renamed over the marker)."""
    tmp = marker.with_name(f".generation.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(f"{time.time_ns()} {os.getpid()}\n", encoding="utf-8")
    tmp.replace(marker)


def _stamp(marker: Path) -> tuple[int, int] | None:
    """What identifies a generation: the marker's inode and modification time (None before any change)."""
    try:
        st = marker.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
