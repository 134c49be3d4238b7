"""Why the gateway did not answer: one exception, audited once whoever raises it.

The pipeline translates every package's errors into a `Refusal` with a kind; `gateway.problems` alone
turns kinds into HTTP status codes. Reasons are written for the researcher and never hold a hidden value,
a token or a raw identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

UNRECORDED_REASONS: Final = "the reasons quote text the audit log does not record"
"""What the audit log holds instead of reasons it refuses to store (an identifier, an address)."""

RefusalKind = Literal[
    "bad_request",  # the spec or body is wrong; `field` names where
    "unauthenticated",  # no valid token
    "forbidden",  # the token lacks the role, or the policy denied
    "not_found",  # no such dataset, request or entry
    "conflict",  # the state changed under the request (e.g. an approval already decided)
    "precondition_failed",  # a precondition the client set (`If-Match`) no longer holds; `field` names it
    "limit",  # the agreement's limit on identical queries is reached
    "unavailable",  # a component the answer needs is down; nothing was released
]


@dataclass
class Refusal(Exception):
    """The gateway refuses; `reasons` say why in words a researcher understands."""

    kind: RefusalKind
    title: str
    reasons: list[str] = field(default_factory=list)
    stage: str = "validate"
    field: str | None = None
    request_id: str | None = None
    audited: bool = False
    """Whoever raised it has already appended the refusal to the audit log; otherwise the app's problem
    handler appends a `request.refused` entry before answering (gateway.app)."""
    bearer_error: str | None = None
    """For a refusal of the bearer token or its role: RFC 6750's error code for the `WWW-Authenticate`
    challenge (`invalid_token`, `insufficient_scope`)."""

    def __str__(self) -> str:
        return f"{self.title}: {'; '.join(self.reasons)}" if self.reasons else self.title


def unavailable(
    component: str,
    failure: BaseException,
    consequence: str,
    *,
    stage: str = "validate",
    request_id: str | None = None,
) -> Refusal:
    """The refusal of a request that `component` (the state database, the store) failed under: locked past
    its busy timeout, a full disk, a missing file, a server down. The failure is named by its class alone,
    the driver's own under SQLAlchemy's wrapper: its message can quote a path, a URL or a statement's
    values. `consequence` tells the caller what became of the request ("nothing was decided")."""
    cause = getattr(failure, "orig", None) or failure
    return Refusal(
        "unavailable",
        f"{component[:1].upper()}{component[1:]} unavailable",
        [f"the site's {component} failed ({type(cause).__name__}); {consequence}"],
        stage=stage,
        request_id=request_id,
    )
