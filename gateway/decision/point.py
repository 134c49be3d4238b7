"""The site's policy decision point: current bundle and engine; a failed reload keeps the last good one."""

from __future__ import annotations

import logging
import threading

from gateway.decision.bundle import PolicyBundle, load_bundle
from gateway.decision.decide import decide
from gateway.decision.engine import PolicyEngine, make_engine
from gateway.decision.models import Decision, DecisionInput
from gateway.settings import SiteSettings

log = logging.getLogger(__name__)


class PolicyDecisionPoint:
    """Loads the site's bundle at start (raising PolicyLoadError on a bad one) and decides requests."""

    def __init__(self, settings: SiteSettings, engine: PolicyEngine | None = None) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._bundle = load_bundle(settings.policy_dir, settings.jurisdiction)
        self._engine = engine if engine is not None else make_engine(settings, self._bundle)

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    @property
    def engine(self) -> PolicyEngine:
        return self._engine

    def decide(self, request: DecisionInput) -> Decision:
        """Fail-closed decision with the current bundle."""
        return decide(self._engine, request)

    def reload(self) -> PolicyBundle:
        """Load the policy folder again and switch to it; return the bundle now in use.

        An invalid bundle raises PolicyLoadError; an OPA server that refuses the upload raises
        PolicyEngineUnavailable. Either way this point keeps its last good bundle (an OPA server left
        half-updated answers with a digest this point does not expect, so its decisions deny).
        """
        with self._lock:
            bundle = load_bundle(self._settings.policy_dir, self._settings.jurisdiction)
            # An OPA server whose last publish failed holds part of a bundle: publish again, even the same.
            if bundle.digest != self._bundle.digest or not getattr(self._engine, "in_sync", True):
                self._engine.replace_bundle(bundle)
                log.info("policy bundle %s replaced %s", bundle.short_digest, self._bundle.short_digest)
                self._bundle = bundle
            return bundle
