"""Who a validated token says the requester is, and the role check every endpoint makes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.auth.errors import Forbidden
from gateway.decision.models import Requester, Visa

Role = Literal["researcher", "steward", "auditor"]
ROLES: tuple[Role, ...] = ("researcher", "steward", "auditor")


@dataclass(frozen=True)
class Principal:
    """A requester proven by a verified token: the claims policy reads, and where they came from.

    `dropped_visas` counts passport visas that were not passed on (untrusted or unverifiable issuer,
    bad signature, expired, unsupported type, conditions, issued to an identity neither the token's nor
    linked to it); `visa_notes` says why for each, in log-safe
    words (visa position and issuer name only).
    """

    # Kept out of repr so a logged Principal never shows who it is.
    sub: str = field(repr=False)
    org: str
    country: str
    roles: frozenset[str]
    visas: tuple[Visa, ...]
    issuer: str
    dev: bool = False
    dropped_visas: int = 0
    visa_notes: tuple[str, ...] = ()

    def to_requester(self) -> Requester:
        """The policy input's `requester`: roles in a stable order so equal principals give equal input."""
        return Requester(
            sub=self.sub,
            org=self.org,
            country=self.country,
            roles=tuple(sorted(self.roles)),
            visas=self.visas,
        )

    def has_role(self, role: Role) -> bool:
        return role in self.roles


def require_role(principal: Principal, role: Role) -> None:
    """Return when the principal holds `role`; raise Forbidden naming the role otherwise."""
    if role not in principal.roles:
        raise Forbidden(role)
