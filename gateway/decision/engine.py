"""The PolicyEngine protocol both backends implement, and the factory that picks one from settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.decision.bundle import PolicyBundle
from gateway.settings import SiteSettings


class PolicyEngine(Protocol):
    """Evaluates `data.fedgate.decision.result` for one input; may raise anything (decide() catches it)."""

    @property
    def name(self) -> str: ...

    @property
    def bundle_digest(self) -> str: ...

    def evaluate(self, policy_input: Mapping[str, Any]) -> object: ...

    def replace_bundle(self, bundle: PolicyBundle) -> None: ...


def make_engine(settings: SiteSettings, bundle: PolicyBundle) -> PolicyEngine:
    """The engine `settings.policy_engine` names, loaded with `bundle`."""
    if settings.policy_engine == "opa":
        from gateway.decision.opa_server import OpaServerEngine

        assert settings.opa_url is not None  # settings refuse policy_engine = "opa" without it
        return OpaServerEngine(settings.opa_url, settings.opa_timeout_s, bundle)
    from gateway.decision.embedded import EmbeddedEngine

    return EmbeddedEngine(bundle)
